"""The official `openai` Python SDK, unmodified, against a gateway with virtual keys (rpm 3) and
the MCP tool loop. Run by tests/sdk.rs; exits non-zero on the first failed check."""
import os

import openai

base_url = os.environ["GATEWAY_URL"] + "/v1"
key = os.environ["GATEWAY_KEY"]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def check(name, fn):
    try:
        fn()
    except Exception as e:
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        raise
    print(f"ok   {name}")


def wrong_key():
    bad = openai.OpenAI(base_url=base_url, api_key="igw-not-a-key", max_retries=0)
    try:
        bad.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "add"}])
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        assert e.code == "invalid_api_key", e.code
        return
    raise AssertionError("no AuthenticationError")


def mcp_loop():
    r = client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "add"}])
    assert r.choices[0].message.content == "result: 5", r
    assert r.usage.total_tokens == 30, r.usage


def mcp_loop_streamed():
    # The SDK's stream helper accumulates every delta: the gateway's tool calls (progress) and
    # the answer, into one well-formed completion.
    with client.chat.completions.stream(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": "add"}],
        stream_options={"include_usage": True},
    ) as s:
        final = s.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "result: 5", final
    assert final.choices[0].finish_reason == "stop", final
    assert [c.function.name for c in msg.tool_calls or []] == ["mcp_add"], msg.tool_calls
    assert final.usage.total_tokens == 30, final.usage


def rate_limited():
    try:
        client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "add"}])
    except openai.RateLimitError as e:
        assert e.code == "rate_limit_exceeded", e.code
        assert e.response.headers["x-ratelimit-limit-requests"] == "3"
        assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(e.response.headers["retry-after"]) >= 1
        return
    raise AssertionError("no RateLimitError")


check("wrong key -> AuthenticationError", wrong_key)
check("MCP loop (non-stream)", mcp_loop)
check("MCP loop (stream helper)", mcp_loop_streamed)
check("a third request in the minute -> RateLimitError", mcp_loop)
check("rpm exhausted -> RateLimitError with x-ratelimit headers", rate_limited)
print("all SDK checks passed")

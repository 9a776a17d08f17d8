"""Drives the gateway's Messages door with the official `anthropic` Python SDK, unmodified.

Run by the integration tests against a gateway whose providers are mock upstreams of every
dialect (OpenAI, Anthropic, Gemini, Cohere) that follow one script: "plain" answers text, "client"
calls get_weather, a conversation with tool results answers "result: <results>". MODELS (JSON)
names one model per dialect; every check runs against each. Exits non-zero on the first failure.
"""
import json
import os
import sys

import anthropic

base_url = os.environ["GATEWAY_URL"]
api_key = os.environ.get("GATEWAY_KEY", "caller-key-not-forwarded")
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0)
models = json.loads(os.environ["MODELS"])

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def check(name, fn):
    try:
        fn()
    except Exception as e:  # report which check failed, then fail the process
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        raise
    print(f"ok   {name}")


def create_text(model):
    r = client.messages.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": "plain"}]
    )
    assert r.type == "message" and r.role == "assistant", r
    assert [b.type for b in r.content] == ["text"], r.content
    assert r.content[0].text == "no tools needed", r.content
    assert r.stop_reason == "end_turn", r.stop_reason
    assert r.usage.input_tokens == 10 and r.usage.output_tokens == 5, r.usage
    assert r.id.startswith("msg_"), r.id
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": "plain"}]
    )
    assert raw.headers.get("request-id"), dict(raw.headers)


def stream_text(model):
    kinds = []
    with client.messages.stream(
        model=model,
        max_tokens=256,
        system="Be brief.",
        messages=[{"role": "user", "content": "plain"}],
    ) as s:
        text = ""
        for ev in s:
            kinds.append(ev.type)
            if ev.type == "text":
                text += ev.text
        final = s.get_final_message()
    assert text == "no tools needed", text
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "content_block_start" in kinds and "message_delta" in kinds, kinds
    assert final.stop_reason == "end_turn", final.stop_reason
    assert final.usage.output_tokens == 5, final.usage
    assert final.content[0].text == "no tools needed", final.content


def tool_round_trip(model, stream, **extra):
    first_messages = [{"role": "user", "content": "client"}]
    if stream:
        with client.messages.stream(
            model=model, max_tokens=4096, tools=TOOLS, messages=first_messages, **extra
        ) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(
            model=model, max_tokens=4096, tools=TOOLS, messages=first_messages, **extra
        )
    if extra.get("thinking"):
        # Signed thinking and redacted thinking, exactly as the provider sent them.
        kinds = [b.type for b in first.content]
        assert kinds[:2] == ["thinking", "redacted_thinking"], kinds
        assert first.content[0].signature == "sig_0", first.content[0]
    assert first.stop_reason == "tool_use", first
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1, first.content
    assert uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}, uses[0]
    assert len(uses[0].id) <= 64 and uses[0].id, uses[0].id
    # The assistant turn goes back as the SDK returned it, with the tool's result.
    history = first_messages + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}],
        },
    ]
    if stream:
        with client.messages.stream(
            model=model, max_tokens=4096, tools=TOOLS, messages=history, **extra
        ) as s:
            second = s.get_final_message()
    else:
        second = client.messages.create(
            model=model, max_tokens=4096, tools=TOOLS, messages=history, **extra
        )
    assert second.stop_reason == "end_turn", second
    assert second.content[-1].text == "result: sunny", second.content


def count_tokens(model):
    r = client.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "How many tokens is this?"}]
    )
    if model.startswith("claude"):
        assert r.input_tokens == 42, r  # the provider's own count
    else:
        assert r.input_tokens > 0, r  # the documented estimate


def errors():
    try:
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": "plain"}],
            extra_query={"provider": "nosuch"},
        )
        raise AssertionError("expected BadRequestError")
    except anthropic.BadRequestError as e:
        assert e.body["type"] == "error", e.body
        assert e.body["error"]["type"] == "invalid_request_error", e.body
        assert "unknown_provider" in e.body["error"]["message"], e.body
        assert e.request_id, "request-id header missing"
    try:
        client.messages.create(
            model=models["openai"].replace("gpt", "limited"),
            max_tokens=16,
            messages=[{"role": "user", "content": "plain"}],
        )
        raise AssertionError("expected RateLimitError")
    except anthropic.RateLimitError as e:
        assert e.body["error"]["type"] == "rate_limit_error", e.body
    try:
        client.messages.create(
            model=models["openai"].replace("gpt", "busy"),
            max_tokens=16,
            messages=[{"role": "user", "content": "plain"}],
        )
        raise AssertionError("expected OverloadedError")
    except anthropic.InternalServerError as e:
        assert e.status_code == 529, e.status_code
        assert e.body["error"]["type"] == "overloaded_error", e.body
    if os.environ.get("GATEWAY_KEY"):
        bad = anthropic.Anthropic(base_url=base_url, api_key="wrong-key", max_retries=0)
        try:
            bad.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "plain"}],
            )
            raise AssertionError("expected AuthenticationError")
        except anthropic.AuthenticationError as e:
            assert e.body["error"]["type"] == "authentication_error", e.body


for dialect, model in models.items():
    check(f"{dialect}: messages.create", lambda: create_text(model))
    check(f"{dialect}: messages.stream", lambda: stream_text(model))
    check(f"{dialect}: tool_use round trip", lambda: tool_round_trip(model, False))
    check(f"{dialect}: tool_use round trip, streamed", lambda: tool_round_trip(model, True))
    check(f"{dialect}: count_tokens", lambda: count_tokens(model))
    if dialect == "anthropic":
        thinking = {"type": "enabled", "budget_tokens": 2048}
        for stream in (False, True):
            check(
                f"{dialect}: thinking + tool_use round trip, relayed (stream={stream})",
                lambda: tool_round_trip(model, stream, thinking=thinking),
            )
check("error types", errors)
print("all SDK checks passed")
sys.stdout.flush()

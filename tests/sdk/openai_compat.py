"""Drives the gateway with the official `openai` Python SDK, unmodified.

Run by tests/sdk.rs against a gateway whose `openai` provider is a mock upstream; each check
asserts what an application using the SDK relies on. Exits non-zero on the first failure.
"""
import json
import os
import sys

import openai

base_url = os.environ["GATEWAY_URL"] + "/v1"
client = openai.OpenAI(base_url=base_url, api_key="caller-key-not-forwarded", max_retries=0)


def check(name, fn):
    try:
        fn()
    except Exception as e:  # report which check failed, then fail the process
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        raise
    print(f"ok   {name}")


def chat():
    r = client.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content == "hello", r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == 12, r.usage
    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers.get("x-request-id"), dict(raw.headers)


def stream():
    s = client.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(s)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!", text
    # The gateway asked upstream for usage but hides the extra chunk the client did not ask for.
    assert all(c.choices for c in chunks), "unrequested usage-only chunk reached the client"
    assert chunks[-1].choices[0].finish_reason == "stop"


def stream_with_usage():
    s = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(s)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12, chunks[-1]


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def tool_calls():
    r = client.chat.completions.create(
        model="openai/tools", messages=[{"role": "user", "content": "weather in Paris?"}], tools=TOOLS
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def tool_calls_stream():
    s = client.chat.completions.create(
        model="openai/tools",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=TOOLS,
        stream=True,
    )
    name, args, finish = "", "", None
    for c in s:
        for d in c.choices[0].delta.tool_calls or []:
            name += d.function.name or ""
            args += d.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}, (name, args)
    assert finish == "tool_calls"


def models():
    ids = [m.id for m in client.models.list()]
    assert ids == ["openai/gpt-4o", "openai/tools"], ids


def embeddings():
    r = client.embeddings.create(model="openai/text-embedding-3-small", input="hi")
    assert r.data[0].embedding == [0.25, -0.5], r


def errors():
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("expected BadRequestError")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "model", (e.status_code, e.body)
    try:
        client.chat.completions.create(model="openai/limited", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("expected RateLimitError")
    except openai.RateLimitError as e:
        assert e.code == "rate_limit_exceeded", e.body
    try:
        client.chat.completions.create(model="openai/limited", messages=[], stream=True)
        raise AssertionError("expected RateLimitError for a stream request")
    except openai.RateLimitError:
        pass


def native_anthropic():
    # The gateway translates OpenAI <-> Anthropic Messages; the SDK must not notice.
    r = client.chat.completions.create(
        model="anthropic/claude-sonnet-4-20250514", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content == "Hello! How can I help?", r
    assert r.usage.prompt_tokens_details.cached_tokens == 2000, r.usage
    s = client.chat.completions.create(
        model="anthropic/claude-sonnet-4-20250514",
        messages=[{"role": "user", "content": "weather and time in Paris?"}],
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls, finish, usage, reasoning = {}, None, None, ""
    for c in s:
        if c.usage:
            usage = c.usage
        if not c.choices:
            continue
        d = c.choices[0].delta
        reasoning += getattr(d, "reasoning_content", None) or (d.model_extra or {}).get("reasoning_content") or ""
        for t in d.tool_calls or []:
            entry = calls.setdefault(t.index, {"name": "", "args": ""})
            entry["name"] += t.function.name or ""
            entry["args"] += t.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert finish == "tool_calls", finish
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"], calls
    assert json.loads(calls[0]["args"]) == {"city": "Paris"}, calls
    assert json.loads(calls[1]["args"]) == {"tz": "Europe/Paris"}, calls
    assert reasoning == "I need the weather and the time.", reasoning
    assert usage.completion_tokens == 89, usage


for name, fn in [
    ("chat", chat),
    ("stream", stream),
    ("stream_with_usage", stream_with_usage),
    ("tool_calls", tool_calls),
    ("tool_calls_stream", tool_calls_stream),
    ("models", models),
    ("embeddings", embeddings),
    ("errors", errors),
    ("native_anthropic", native_anthropic),
]:
    check(name, fn)
print("all SDK checks passed")
sys.exit(0)

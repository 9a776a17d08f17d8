"""Drives the gateway's Responses door with the official `openai` Python SDK, unmodified.

Run by the integration tests against a gateway whose providers are mock upstreams that follow
one script: "plain" answers text, "client" calls get_weather, a conversation with tool results
answers "result: <results>". MODELS (JSON) names one model per target: an OpenAI Responses
server (relayed natively), an OpenAI-compatible chat server, Anthropic, Gemini and Cohere; every
check runs against each. Exits non-zero on the first failure.
"""
import json
import os

import openai

base_url = os.environ["GATEWAY_URL"] + "/v1"
api_key = os.environ.get("GATEWAY_KEY", "caller-key-not-forwarded")
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
models = json.loads(os.environ["MODELS"])

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
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
    r = client.responses.create(model=model, input="plain")
    assert r.object == "response" and r.status == "completed", r
    assert r.output_text == "no tools needed", r.output
    assert r.usage.input_tokens == 10 and r.usage.output_tokens == 5, r.usage
    assert r.id.startswith("resp_"), r.id
    # Retrieve returns the same response.
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "no tools needed", got
    items = client.responses.input_items.list(r.id)
    assert len(items.data) == 1 and items.data[0].role == "user", items


def stream_text(model):
    kinds, seqs = [], []
    with client.responses.stream(model=model, input="plain") as s:
        for ev in s:
            kinds.append(ev.type)
            seqs.append(ev.sequence_number)
        final = s.get_final_response()
    assert final.output_text == "no tools needed", final.output
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    for k in ["response.in_progress", "response.output_item.added", "response.content_part.added",
              "response.output_text.delta", "response.output_text.done", "response.output_item.done"]:
        assert k in kinds, (k, kinds)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert final.usage.input_tokens == 10 and final.usage.output_tokens == 5, final.usage
    # A streamed response is stored like any other.
    assert client.responses.retrieve(final.id).output_text == "no tools needed"


def function_round_trip(model, stream):
    if stream:
        with client.responses.stream(model=model, input="client", tools=TOOLS) as s:
            kinds = [ev.type for ev in s]
            r1 = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds, kinds
        assert "response.function_call_arguments.done" in kinds, kinds
    else:
        r1 = client.responses.create(model=model, input="client", tools=TOOLS)
    calls = [o for o in r1.output if o.type == "function_call"]
    assert len(calls) == 1, r1.output
    assert calls[0].name == "get_weather", calls[0]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}, calls[0].arguments
    # The next turn names only the previous response and the tool's output.
    r2 = client.responses.create(
        model=model,
        previous_response_id=r1.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=TOOLS,
    )
    assert r2.output_text == "result: sunny", r2.output
    assert r2.previous_response_id == r1.id, r2.previous_response_id
    items = client.responses.input_items.list(r2.id, order="asc")
    assert [i.type for i in items.data] == ["function_call_output"], items.data
    # Delete: gone for good.
    d = client.responses.delete(r1.id)
    assert d is None or getattr(d, "deleted", True), d
    # (A mirror of an OpenAI-served response is deleted there too; its 404s are OpenAI's.)
    ours = r1.id.startswith("resp_gw_")
    try:
        client.responses.retrieve(r1.id)
        raise AssertionError("a deleted response was returned")
    except openai.NotFoundError as e:
        assert not ours or e.body["code"] == "response_not_found", e.body
    try:
        client.responses.create(model=model, previous_response_id=r1.id, input="again")
        raise AssertionError("a deleted previous_response_id was accepted")
    except openai.NotFoundError as e:
        assert e.body["param"] == "previous_response_id", e.body


def unknown_id(model):
    try:
        client.responses.retrieve("resp_gw_0000")
        raise AssertionError("an unknown response was returned")
    except openai.NotFoundError as e:
        assert e.body["code"] == "response_not_found", e.body


for target, model in models.items():
    check(f"{target}: create, retrieve, input_items", lambda: create_text(model))
    check(f"{target}: stream helper", lambda: stream_text(model))
    check(f"{target}: function call round trip", lambda: function_round_trip(model, False))
    check(f"{target}: streamed function call round trip", lambda: function_round_trip(model, True))
check("unknown id: 404", lambda: unknown_id(next(iter(models.values()))))
print("all SDK checks passed")

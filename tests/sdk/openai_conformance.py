"""Drives Switchyard with the official `openai` Python SDK, unchanged.

Run by the e2e test `sdk::official_openai_python_sdk_works_unchanged`:
    python tests/sdk/openai_conformance.py --base-url URL --api-key KEY --model MODEL --provider NAME
Exits 0 when every check passes; prints one line per check.
"""

import argparse
import json
import sys

import openai


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--provider", default="openai", help="the provider entry expected to serve MODEL")
    ap.add_argument("--embedding-model", help="an embedding model served by the same provider")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    model = args.model
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]

    # Non-streamed, with the raw response for headers.
    raw = client.chat.completions.with_raw_response.create(model=model, messages=prompt)
    completion = raw.parse()
    check("non-stream has request id header", bool(raw.headers.get("x-switchyard-request-id")))
    check("non-stream provider header", raw.headers.get("x-switchyard-provider") == args.provider,
          raw.headers.get("x-switchyard-provider"))
    text = completion.choices[0].message.content
    check("non-stream content", bool(text), repr(text))
    check("non-stream finish_reason", completion.choices[0].finish_reason == "stop")
    check("non-stream usage", completion.usage is not None and completion.usage.total_tokens > 0)

    # Streamed with usage: same text as the non-streamed answer (the mock is deterministic).
    stream = client.chat.completions.create(
        model=model, messages=prompt, stream=True, stream_options={"include_usage": True}
    )
    parts, last = [], None
    for chunk in stream:
        last = chunk
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    check("stream content equals non-stream", "".join(parts) == text, "".join(parts))
    check("stream ends with usage", last is not None and last.usage is not None and last.usage.total_tokens > 0)

    # Tools, non-streamed and streamed.
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    tool_prompt = [{"role": "user", "content": "Weather in Paris? [[mock:tool_call=get_weather]]"}]
    c = client.chat.completions.create(model=model, messages=tool_prompt, tools=tools)
    call = c.choices[0].message.tool_calls[0]
    check("tool call name", call.function.name == "get_weather")
    check("tool call arguments are JSON", isinstance(json.loads(call.function.arguments), dict))
    check("tool call finish_reason", c.choices[0].finish_reason == "tool_calls")
    args_parts, names = [], []
    for chunk in client.chat.completions.create(model=model, messages=tool_prompt, tools=tools, stream=True):
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            if tc.function and tc.function.name:
                names.append(tc.function.name)
            if tc.function and tc.function.arguments:
                args_parts.append(tc.function.arguments)
    check("streamed tool call name", names == ["get_weather"], repr(names))
    check("streamed tool arguments assemble to JSON", isinstance(json.loads("".join(args_parts)), dict))

    # A tool result round trip is accepted.
    follow = [{"role": "user", "content": "Weather in Paris?"}] + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    c = client.chat.completions.create(model=model, messages=follow, tools=tools)
    check("tool result accepted", c.choices[0].message.content is not None)

    # The Responses API (stateless), plain, streamed and with a tool round trip.
    r = client.responses.create(model=model, instructions="Be brief.", input="Name a river.")
    check("responses output_text", r.output_text == text, repr(r.output_text))
    check("responses usage", r.usage is not None and r.usage.total_tokens > 0 and r.status == "completed")
    deltas, kinds = [], []
    for ev in client.responses.create(model=model, instructions="Be brief.", input="Name a river.", stream=True):
        kinds.append(ev.type)
        if ev.type == "response.output_text.delta":
            deltas.append(ev.delta)
    check("responses stream text", "".join(deltas) == text, "".join(deltas))
    check("responses stream lifecycle", kinds[0] == "response.created" and kinds[-1] == "response.completed", repr(kinds))
    with client.responses.stream(model=model, instructions="Be brief.", input="Name a river.") as stream:
        final = stream.get_final_response()
    check("responses stream helper", final.output_text == text, repr(final.output_text))
    rtools = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    r = client.responses.create(model=model, input="Weather in Paris? [[mock:tool_call=get_weather]]", tools=rtools)
    fc = [o for o in r.output if o.type == "function_call"]
    check("responses function_call", len(fc) == 1 and fc[0].name == "get_weather", repr(r.output))
    check("responses function_call arguments", isinstance(json.loads(fc[0].arguments), dict))
    with client.responses.stream(model=model, input="Weather in Paris? [[mock:tool_call=get_weather]]", tools=rtools) as stream:
        final = stream.get_final_response()
    sfc = [o for o in final.output if o.type == "function_call"]
    check("responses streamed function_call", len(sfc) == 1 and sfc[0].arguments == fc[0].arguments, repr(final.output))
    r = client.responses.create(model=model, tools=rtools, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": fc[0].call_id, "name": "get_weather", "arguments": fc[0].arguments},
        {"type": "function_call_output", "call_id": fc[0].call_id, "output": "18C and sunny"},
    ])
    check("responses tool result round trip", bool(r.output_text), repr(r.output))
    try:
        client.responses.create(model=model, input="x", previous_response_id="resp_123")
        check("responses previous_response_id refused", False)
    except openai.BadRequestError as e:
        check("responses previous_response_id refused", e.status_code == 400)

    # Errors surface as the SDK's own exception types.
    bad = openai.OpenAI(base_url=args.base_url, api_key="sk-wrong-key-000", max_retries=0)
    try:
        bad.chat.completions.create(model=model, messages=prompt)
        check("wrong key raises AuthenticationError", False)
    except openai.AuthenticationError as e:
        check("wrong key raises AuthenticationError", e.status_code == 401)
    try:
        client.chat.completions.create(model="no-such-model", messages=prompt)
        check("unknown model raises NotFoundError", False)
    except openai.NotFoundError as e:
        check("unknown model raises NotFoundError", e.status_code == 404)
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi [[mock:status=429,retry_after=1]]"}]
        )
        check("provider 429 raises RateLimitError", False)
    except openai.RateLimitError as e:
        check("provider 429 raises RateLimitError", e.status_code == 429)
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi [[mock:error=context_length]]"}]
        )
        check("provider context overflow raises BadRequestError", False)
    except openai.BadRequestError as e:
        check("provider context overflow raises BadRequestError", e.status_code == 400 and e.code == "context_length_exceeded",
              f"{e.status_code} {e.code}")
    try:
        client.chat.completions.create(model=model, messages=[])
        check("empty messages raises BadRequestError", False)
    except openai.BadRequestError as e:
        check("empty messages raises BadRequestError", e.status_code == 400)

    if args.embedding_model:
        # The SDK asks for base64 by default and decodes it.
        e = client.embeddings.create(model=args.embedding_model, input=["a river", "copper light"])
        check("embeddings count", len(e.data) == 2 and [d.index for d in e.data] == [0, 1])
        check("embeddings vectors", all(len(d.embedding) > 0 and all(-1 <= x <= 1 for x in d.embedding) for d in e.data))
        e2 = client.embeddings.create(model=args.embedding_model, input="a river", encoding_format="float")
        check("embeddings base64 equals float", e2.data[0].embedding == e.data[0].embedding)
        check("embeddings usage", e.usage.prompt_tokens > 0)

    models = [m.id for m in client.models.list()]
    check("models.list includes the model", model in models, repr(models))
    # models.retrieve, with Switchyard's extension kept as an extra field.
    m = client.models.retrieve(model)
    extra = (m.model_extra or {}).get("switchyard") or {}
    check("models.retrieve", m.id == model and m.object == "model", repr(m))
    check("models.retrieve surfaces", "chat.completions" in extra.get("surfaces", []), repr(extra))
    try:
        client.models.retrieve("no-such-model")
        check("models.retrieve of an unknown model is 404", False)
    except openai.NotFoundError as e:
        check("models.retrieve of an unknown model is 404", e.status_code == 404, repr(e))
    print("all checks passed")


if __name__ == "__main__":
    main()

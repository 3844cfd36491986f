"""Drives Switchyard's /v1/messages with the official `anthropic` Python SDK, unchanged.

Run by the e2e test `sdk::official_anthropic_python_sdk_works_unchanged`:
    python tests/sdk/anthropic_conformance.py --base-url URL --api-key KEY --model MODEL --provider NAME
Exits 0 when every check passes; prints one line per check.
"""

import argparse
import sys

import anthropic


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--provider", required=True, help="the provider entry expected to serve MODEL")
    args = ap.parse_args()
    client = anthropic.Anthropic(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    model = args.model
    prompt = [{"role": "user", "content": "Name a river."}]

    # Non-streamed, with the raw response for headers.
    raw = client.messages.with_raw_response.create(model=model, max_tokens=100, system="Be brief.", messages=prompt)
    msg = raw.parse()
    check("provider header", raw.headers.get("x-switchyard-provider") == args.provider, raw.headers.get("x-switchyard-provider"))
    check("message type", msg.type == "message" and msg.role == "assistant")
    check("text block", msg.content and msg.content[0].type == "text" and bool(msg.content[0].text), repr(msg.content))
    text = msg.content[0].text
    check("stop_reason end_turn", msg.stop_reason == "end_turn", msg.stop_reason)
    check("usage", msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0, repr(msg.usage))

    # Streamed: the SDK's stream helper assembles the same text and the final usage.
    with client.messages.stream(model=model, max_tokens=100, system="Be brief.", messages=prompt) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    check("stream text equals non-stream", streamed == text, repr(streamed))
    check("stream final message text", final.content[0].text == text)
    check("stream stop_reason", final.stop_reason == "end_turn", final.stop_reason)
    check("stream usage", final.usage.output_tokens > 0 and final.usage.input_tokens > 0, repr(final.usage))

    # Tools, non-streamed and streamed, then a tool result round trip.
    tools = [{
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }]
    tool_prompt = [{"role": "user", "content": "Weather in Paris? [[mock:tool_call=get_weather]]"}]
    m = client.messages.create(model=model, max_tokens=100, messages=tool_prompt, tools=tools)
    uses = [b for b in m.content if b.type == "tool_use"]
    check("tool_use block", len(uses) == 1 and uses[0].name == "get_weather", repr(m.content))
    check("tool_use input is an object", isinstance(uses[0].input, dict) and "query" in uses[0].input, repr(uses[0].input))
    check("tool stop_reason", m.stop_reason == "tool_use", m.stop_reason)
    with client.messages.stream(model=model, max_tokens=100, messages=tool_prompt, tools=tools) as stream:
        final = stream.get_final_message()
    suses = [b for b in final.content if b.type == "tool_use"]
    check("streamed tool_use", len(suses) == 1 and suses[0].name == "get_weather", repr(final.content))
    check("streamed tool input assembles", suses[0].input == uses[0].input, repr(suses[0].input))
    check("streamed tool stop_reason", final.stop_reason == "tool_use", final.stop_reason)
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": "get_weather", "input": uses[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18C and sunny"}]},
    ]
    m = client.messages.create(model=model, max_tokens=100, messages=follow, tools=tools)
    check("tool result round trip answers in text", m.content and m.content[0].type == "text", repr(m.content))

    # Errors surface as the SDK's own exception types.
    bad = anthropic.Anthropic(base_url=args.base_url, api_key="sk-wrong-key-000", max_retries=0)
    try:
        bad.messages.create(model=model, max_tokens=10, messages=prompt)
        check("wrong key raises AuthenticationError", False)
    except anthropic.AuthenticationError as e:
        check("wrong key raises AuthenticationError", e.status_code == 401)
    try:
        client.messages.create(model="no-such-model", max_tokens=10, messages=prompt)
        check("unknown model raises NotFoundError", False)
    except anthropic.NotFoundError as e:
        check("unknown model raises NotFoundError", e.status_code == 404)
    try:
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi [[mock:status=429,retry_after=1]]"}])
        check("provider 429 raises RateLimitError", False)
    except anthropic.RateLimitError as e:
        check("provider 429 raises RateLimitError", e.status_code == 429)
    try:
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi [[mock:error=overloaded]]"}])
        check("provider overload raises the 529 error", False)
    except anthropic.APIStatusError as e:
        check("provider overload raises the 529 error", e.status_code == 529, str(e.status_code))
    try:
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi [[mock:error=context_length]]"}])
        check("provider context overflow raises BadRequestError", False)
    except anthropic.BadRequestError as e:
        check("provider context overflow raises BadRequestError", e.status_code == 400)
    try:
        client.messages.create(model=model, max_tokens=10, messages=[])
        check("empty messages raises BadRequestError", False)
    except anthropic.BadRequestError as e:
        check("empty messages raises BadRequestError", e.status_code == 400 and e.body["error"]["type"] == "invalid_request_error",
              repr(e.body))
    print("all checks passed")


if __name__ == "__main__":
    main()

"""Runs a batch through Switchyard with the official `openai` Python SDK, unchanged:
files.create → batches.create → batches.retrieve (until it ends) → batches.list →
files.content of the output (and error) file; checks every custom_id appears
exactly once, in input order, and prints the output's total token usage as the
last line (`usage <batch id> <prompt> <completion>`) for the caller to compare with ClickHouse.

Run by the e2e test `sdk::official_openai_python_sdk_runs_a_batch`:
    python tests/sdk/openai_batch.py --base-url URL --api-key KEY --model MODEL [--items N]
"""

import argparse
import io
import json
import sys
import time

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
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    ids = [f"ticket-{i:05d}" for i in range(args.items)]
    lines = [
        json.dumps({
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": args.model,
                "messages": [{"role": "user", "content": f"Classify support ticket {i}: my order is late."}],
                "max_tokens": 8,
            },
        })
        for i, cid in enumerate(ids)
    ]
    data = ("\n".join(lines) + "\n").encode()
    f = client.files.create(file=("tickets.jsonl", io.BytesIO(data)), purpose="batch")
    check("file created", f.id.startswith("file-") and f.bytes == len(data) and f.purpose == "batch", f)

    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "sdk-conformance"},
    )
    check("batch created", b.id.startswith("batch_") and b.status == "validating", b)
    check("batch total", b.request_counts.total == args.items, b.request_counts)

    seen_statuses = {b.status}
    deadline = time.time() + args.timeout
    while b.status not in ("completed", "failed", "cancelled", "expired"):
        check("batch ends in time", time.time() < deadline, b)
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
        seen_statuses.add(b.status)
        done = b.request_counts.completed + b.request_counts.failed
        check("progress within total", done <= b.request_counts.total, b.request_counts)
    check("batch completed", b.status == "completed", b)
    check("saw in_progress", "in_progress" in seen_statuses, seen_statuses)
    check("counts", b.request_counts.completed == args.items and b.request_counts.failed == 0, b.request_counts)
    check("metadata kept", (b.metadata or {}).get("job") == "sdk-conformance", b.metadata)
    check("timestamps", all(x is not None for x in (b.created_at, b.in_progress_at, b.completed_at)), b)
    check("no error file", b.error_file_id is None, b.error_file_id)

    listed = client.batches.list(limit=10)
    check("listed", any(x.id == b.id for x in listed.data), [x.id for x in listed.data])

    out = client.files.content(b.output_file_id).text.splitlines()
    check("one line per item", len(out) == args.items, len(out))
    prompt = completion = 0
    got = []
    for raw in out:
        item = json.loads(raw)
        got.append(item["custom_id"])
        check_line = item["response"]["status_code"] == 200 and item["error"] is None
        if not check_line:
            check("line answered", False, raw)
        body = item["response"]["body"]
        if not body["choices"][0]["message"]["content"]:
            check("line content", False, raw)
        prompt += body["usage"]["prompt_tokens"]
        completion += body["usage"]["completion_tokens"]
    check("every custom_id exactly once, in input order", got == ids)
    meta = client.files.retrieve(b.output_file_id)
    check("output file object", meta.purpose == "batch_output", meta)
    usage_line = f"usage {b.id} {prompt} {completion}"

    # Cancel through the SDK: slow items, cancelled at once; partial files.
    slow = "\n".join(
        json.dumps({"custom_id": f"slow-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": args.model, "messages": [{"role": "user", "content": f"[[mock:ttft_ms=1000]] slow {i}"}]}})
        for i in range(300)
    ).encode()
    f2 = client.files.create(file=("slow.jsonl", io.BytesIO(slow)), purpose="batch")
    c = client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
    c = client.batches.cancel(c.id)
    check("cancelling", c.status in ("cancelling", "cancelled"), c.status)
    deadline = time.time() + 60
    while c.status != "cancelled":
        check("cancel ends in time", time.time() < deadline, c)
        time.sleep(0.2)
        c = client.batches.retrieve(c.id)
    check("cancelled batch ran only what was in flight", c.request_counts.completed < 300, c.request_counts)
    errs = client.files.content(c.error_file_id).text.splitlines()
    not_run = [json.loads(l) for l in errs if json.loads(l)["error"]]
    check("items never run are in the error file", len(not_run) + c.request_counts.completed == 300
          and all(e["error"]["code"] == "batch_cancelled" for e in not_run), len(not_run))
    print(usage_line)


if __name__ == "__main__":
    main()

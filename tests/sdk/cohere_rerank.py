"""Drives Switchyard's rerank API with the official `cohere` Python SDK (its
v1 and v2 clients, unchanged) and with plain `httpx`, as a retrieval
pipeline would after its embeddings.

Run by the e2e test `sdk::official_cohere_python_sdk_reranks_unchanged`:
    python tests/sdk/cohere_rerank.py --base-url URL --api-key KEY --model MODEL --provider NAME
URL is the server's root (the SDK adds /v1/rerank or /v2/rerank).
Exits 0 when every check passes; prints one line per check.
"""

import argparse
import sys

import cohere
import httpx


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    if not cond:
        sys.exit(1)


DOCS = [
    "a recipe for sourdough bread",
    "tide tables for the harbour",
    "when the tide turns at the harbour mouth",
    "a history of lighthouses",
]
QUERY = "tide harbour"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--provider", required=True, help="the provider entry expected to serve MODEL")
    args = ap.parse_args()

    # v2 client: documents as strings, top_n.
    v2 = cohere.ClientV2(api_key=args.api_key, base_url=args.base_url)
    r = v2.rerank(model=args.model, query=QUERY, documents=DOCS, top_n=2)
    check("v2 returns top_n results", len(r.results) == 2, r)
    check("v2 best first", r.results[0].relevance_score >= r.results[1].relevance_score, r)
    check("v2 best is about tides at the harbour", r.results[0].index in (1, 2), r)
    check("v2 names the answer", bool(r.id), r)

    # v1 client: documents as objects, with their texts back.
    v1 = cohere.Client(api_key=args.api_key, base_url=args.base_url)
    r1 = v1.rerank(model=args.model, query=QUERY, documents=[{"text": d} for d in DOCS],
                   return_documents=True)
    check("v1 ranks every document", sorted(x.index for x in r1.results) == [0, 1, 2, 3], r1)
    check("v1 returns the texts", all(x.document.text == DOCS[x.index] for x in r1.results), r1)
    check("v1 agrees with v2", [x.index for x in r1.results[:2]] == [x.index for x in r.results], (r1, r))

    # A bad request is the SDK's BadRequestError, with Cohere's message.
    try:
        v2.rerank(model=args.model, query=QUERY, documents=DOCS, top_n=0)
        check("top_n 0 refused", False)
    except cohere.errors.BadRequestError as e:
        check("top_n 0 refused with a message", "top_n" in str(e.body), e.body)

    # httpx, as a hand-written client would: the gateway's headers and the
    # billed units as the provider reported them.
    resp = httpx.post(
        args.base_url + "/v1/rerank",
        headers={"Authorization": f"Bearer {args.api_key}"},
        json={"model": args.model, "query": QUERY, "documents": DOCS, "top_n": 1},
        timeout=30,
    )
    check("httpx 200", resp.status_code == 200, resp.text)
    check("httpx provider header", resp.headers.get("x-switchyard-provider") == args.provider,
          resp.headers.get("x-switchyard-provider"))
    body = resp.json()
    check("httpx one result", len(body["results"]) == 1, body)
    billed = body["meta"]["billed_units"]
    check("httpx billed units", billed.get("search_units", 0) > 0 or billed.get("input_tokens", 0) > 0, body)
    print("all checks passed")


if __name__ == "__main__":
    main()

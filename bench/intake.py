"""Slow and greedy clients against a running switchyard: what its memory does.

Usage: intake.py <pid> <host:port> <key>. Prints one JSON object.

Phases (each after the previous one's connections are gone):
  baseline   RSS after 50 ordinary requests.
  slowloris  200 connections that send part of their headers and then nothing;
             held up to 40 s: how many the server closed, and when.
  bodies     100 connections that each declare a 4 MiB body, send 4 MiB - 1 KiB
             of it at once and then nothing; held up to 30 s: what each got
             (408, 503, nothing) and the peak RSS meanwhile.
  after      RSS 10 s after the last connection closed, then 50 ordinary requests
             to show the service still answers.
"""

import asyncio
import json
import sys
import time

PID, ADDR, KEY = int(sys.argv[1]), sys.argv[2], sys.argv[3]
HOST, PORT = ADDR.split(":")[0], int(ADDR.split(":")[1])
MIB = 1024 * 1024


def rss_mib():
    fields = {}
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                fields[k] = int(v.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


class Peak:
    """Samples RSS every 100 ms while running."""

    def __init__(self):
        self.peak = 0.0
        self.task = None

    async def _run(self):
        while True:
            self.peak = max(self.peak, rss_mib()[0])
            await asyncio.sleep(0.1)

    def __enter__(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


async def ordinary(n):
    ok = 0
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(n):
        r, w = await asyncio.open_connection(HOST, PORT)
        w.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await w.drain()
        data = await r.read()
        ok += data.startswith(b"HTTP/1.1 200")
        w.close()
    return ok


async def held(conn_fn, n, hold):
    """Opens n connections with conn_fn(reader, writer); waits up to `hold`
    seconds for each to be answered or closed; returns their outcomes."""
    started = time.monotonic()

    async def one():
        try:
            r, w = await asyncio.open_connection(HOST, PORT)
        except OSError as e:
            return ("connect failed", None)
        try:
            await conn_fn(w)
            left = hold - (time.monotonic() - started)
            data = await asyncio.wait_for(r.read(200), max(left, 0.1))
            at = round(time.monotonic() - started, 1)
            if not data:
                return ("closed", at)
            return (data.split(b" ")[1].decode(), at)
        except asyncio.TimeoutError:
            return ("open", None)
        except OSError:
            return ("reset", round(time.monotonic() - started, 1))
        finally:
            w.close()

    return await asyncio.gather(*[one() for _ in range(n)])


def tally(outcomes):
    counts, last = {}, {}
    for what, at in outcomes:
        counts[what] = counts.get(what, 0) + 1
        if at is not None:
            last[what] = max(last.get(what, 0), at)
    return {"counts": counts, "latest_s": last}


async def partial_headers(w):
    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
    await w.drain()


BODY = 4 * MIB


async def stalled_body(w):
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    ).encode()
    w.write(head + b'{"model": "gpt-4o-mini", "x": "' + b"y" * (BODY - 1024))
    await w.drain()


async def main():
    out = {}
    await ordinary(50)
    out["baseline_rss_mib"] = round(rss_mib()[0], 1)
    with Peak() as p:
        out["slowloris"] = tally(await held(partial_headers, 200, 40))
    out["slowloris"]["peak_rss_mib"] = round(p.peak, 1)
    with Peak() as p:
        out["bodies"] = tally(await held(stalled_body, 100, 30))
    out["bodies"]["peak_rss_mib"] = round(p.peak, 1)
    await asyncio.sleep(10)
    out["after_rss_mib"] = round(rss_mib()[0], 1)
    out["peak_rss_mib"] = round(rss_mib()[1], 1)
    out["ordinary_ok_after"] = await ordinary(50)
    print(json.dumps(out))


asyncio.run(main())

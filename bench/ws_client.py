#!/usr/bin/env python3
"""Python baseline for issue 8, figure 4: the `websockets` client (what python-binance builds on) reading
the blast-mode exchange, `json.loads` on every frame, the same id check as the bare Rust client.

Usage: bench/ws_client.py <aggTrade|depth> <frames> <wss://localhost:PORT> <ca.pem> [exchange pid]
Prints one row of the table of adapters/benches/stream.rs: consumer | payload | frames | bytes/frame |
msg/s | MB/s | CPU us/msg | CPU % of wall | peak RSS MiB | exchange CPU us/msg.
"""
import asyncio
import json
import os
import resource
import ssl
import sys
import time

import websockets

# websockets' receive queue: 16 frames by default (kept). KEEL_WS_MAX_QUEUE=none lifts the bound (worse here: the whole blast queues up in memory).
_Q = os.environ.get("KEEL_WS_MAX_QUEUE", "default")
MAX_QUEUE = None if _Q == "none" else 16 if _Q == "default" else int(_Q)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


async def run(url, ca, frames):
    """Returns (frames, bytes, CPU s and wall s at the last frame). The close handshake is left out
    of the timing, as the Rust consumers' is (the bare one does not wait for it): websockets waits
    for the server to close TCP, up to close_timeout, which the exchange does not hurry."""
    ctx = ssl.create_default_context(cafile=ca)
    n = nbytes = last = 0
    at_last = None
    id_key = "u" if "@depth" in url else "a"
    async with websockets.connect(url, ssl=ctx, max_size=None, max_queue=MAX_QUEUE, close_timeout=1) as ws:
        async for msg in ws:
            nbytes += len(msg)
            data = json.loads(msg)["data"]
            i = data[id_key]  # aggTrade: a; depth: u (its "a" is the asks)
            if i <= last:
                raise SystemExit(f"ids went backwards: {last} then {i}")
            last = i
            n += 1
            if n >= frames:
                at_last = (cpu(), time.perf_counter())
                break
    if at_last is None:
        raise SystemExit(f"the exchange closed after {n} frames")
    return n, nbytes, at_last


def main():
    kind, frames, base, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    pid = sys.argv[5] if len(sys.argv) > 5 else None
    url = f"{base}/stream?streams=btcusdt@{kind}"
    ex0 = proc_cpu(pid) if pid else None
    c0, t0 = cpu(), time.perf_counter()
    n, nbytes, (c1, t1) = asyncio.run(run(url, ca, frames))
    wall, c = t1 - t0, c1 - c0
    ex1 = proc_cpu(pid) if pid else None
    ex = f"{(ex1 - ex0) * 1e6 / n:.2f}" if ex0 is not None and ex1 is not None else "-"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| python websockets {websockets.__version__} | {kind} | {n} | {nbytes / n:.0f} | {n / wall:.0f} "
          f"| {nbytes / wall / 1e6:.1f} | {c * 1e6 / n:.2f} | {100 * c / wall:.0f} | {rss:.0f} | {ex} |")


if __name__ == "__main__":
    main()

"""Peers side by side, and ours under open-loop overload (part of ``python -m benchmarks serving``).

Every server runs at once on the same model file and the same prepared image, and the same
closed-loop client (``http_harness.load``) visits them in turn, round after round, so that a
change in what else the machine is doing falls on all of them alike:

- ours, ``bentoml serve`` with 1 worker and with one worker per core (``BNSERVE_WORKERS``)
- the floor: the same upload reading, preprocessing and micro-batcher on bare uvicorn +
  Starlette, in 1 process and in one per core
- LitServe, ``LitAPI`` with ``batch``/``unbatch``: default settings, and tuned (max_batch_size 64,
  batch_timeout 1 ms, ZeroMQ fast queue, one inference worker per core)

ONNX Runtime gets cores / processes threads in each (as ``BNSERVE_THREADS`` defaults).

Then the open-loop overload row: arrivals at twice the capacity ours just measured (at
concurrency 32), answered 200 (admitted) or 503 (shed), with nothing reset or timed out.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .common import markdown_table
from .http_harness import Server, load, open_loop, summary

PEER_LEVELS = (1, 32)


def configs(model: Path) -> list[tuple[str, str, dict, str | None]]:
    """(name, target, env, module); every pair compared gives its servers the same processes
    and ONNX Runtime threads per process (cores / BNSERVE_WORKERS)."""
    from serving.settings import available_cores

    n = available_cores()
    one = {"BNSERVE_MODEL": str(model), "BNSERVE_WORKERS": "1"}
    many = {"BNSERVE_MODEL": str(model), "BNSERVE_WORKERS": str(n)}
    return [
        ("ours, 1 worker", "serving.service:BnServe", one, None),
        (f"ours, {n} workers (default)", "serving.service:BnServe", many, None),
        ("bare uvicorn + Starlette (floor), 1 process", "bare", one, "benchmarks.peers"),
        (f"bare uvicorn + Starlette (floor), {n} processes", "bare", many, "benchmarks.peers"),
        ("LitServe, default (1 inference worker)", "litserve", one, "benchmarks.peers"),
        (f"LitServe, tuned ({n} inference workers, batching, fast queue)", "litserve",
         {**many, "LITSERVE_TUNED": "1"}, "benchmarks.peers"),
    ]


def run(model: Path, image: bytes, seconds: float, rounds: int = 3) -> dict:
    servers = []
    try:
        for name, target, env, module in configs(model):
            servers.append((name, Server(target, env, module=module)))
        for _, server in servers:
            server.wait_ready()
            asyncio.run(load(server.url, image, 4, 1.0))  # warm-up
        print(f"  load average before: {os.getloadavg()}", flush=True)
        totals = {(name, c): {"ok": 0, "errors": 0, "wall": 0.0, "p50": [], "p99": []}
                  for name, _ in servers for c in PEER_LEVELS}
        for c in PEER_LEVELS:
            for _ in range(rounds):
                for name, server in servers:
                    r = asyncio.run(load(server.url, image, c, seconds / rounds))
                    t = totals[(name, c)]
                    t["ok"] += r["ok"]
                    t["errors"] += r["errors"]
                    t["wall"] += seconds / rounds
                    t["p50"].append(r["p50_ms"])
                    t["p99"].append(r["p99_ms"])
        print(f"  load average after: {os.getloadavg()}", flush=True)
        ours_default = servers[1][1]
        capacity = totals[(servers[1][0], 32)]["ok"] / totals[(servers[1][0], 32)]["wall"]
        log, offered = asyncio.run(open_loop(ours_default.url, image, 2 * capacity, seconds))
        overload = summary(log)
    finally:
        for _, server in servers:
            server.stop()
    rows = []
    for c in PEER_LEVELS:
        base = totals[(servers[0][0], c)]
        base_rps = base["ok"] / base["wall"]
        for name, _ in servers:
            t = totals[(name, c)]
            rps = t["ok"] / t["wall"]
            rows.append([name, c, round(rps, 1), f"{rps / base_rps:.2f}x" if base_rps else "-",
                         round(sorted(t["p50"])[len(t["p50"]) // 2], 2), round(max(t["p99"]), 1),
                         f"{t['errors']} / {t['ok'] + t['errors']}"])
    table = markdown_table(["server", "concurrency", "req/s", "vs ours, 1 worker", "p50 ms (median of rounds)",
                            "p99 ms (worst round)", "errors / requests"], rows)
    kinds = overload["kinds"]
    other = {k: v for k, v in kinds.items() if k not in ("ok", "shed")}
    overload_table = markdown_table(
        ["server", "capacity req/s (c=32)", "offered req/s", "goodput req/s", "admitted p50 ms", "admitted p99 ms",
         "shed (503)", "shed p99 ms", "reset / timed out / other"],
        [[servers[1][0], round(capacity), round(offered), round(kinds.get("ok", 0) / seconds),
          round(overload["ok_p50_ms"], 1), round(overload["ok_p99_ms"], 1), kinds.get("shed", 0),
          round(overload["shed_p99_ms"], 1), sum(other.values())]])
    return {"table": table, "overload_table": overload_table, "totals": {f"{k[0]} c={k[1]}": v for k, v in totals.items()},
            "overload": {**overload, "capacity": capacity, "offered": offered},
            "note": (f"{rounds} interleaved rounds of {seconds / rounds:.1f} s per server and level; load average "
                     "printed by the run. Overload: open-loop arrivals for "
                     f"{seconds:.0f} s at twice the capacity measured just before.")}

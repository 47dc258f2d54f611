"""The performance targets, checked against the numbers of the same benchmark run (nothing typed in):
a table of target, measured value, met or missed. Rendered at the top of docs/BENCHMARKS.md."""

from __future__ import annotations

from .common import markdown_table

FULL_VGG_INFERENCE = "VGG-11 + BN, full width, 32x32x3"
FULL_VGG_SERVING = "full VGG-11 + BN (32x32x3)"
ORT_SERVED = "ORT, our folded file, ORT_ENABLE_ALL"
OURS = "ours (ONNX Runtime, batching)"


def _one(rows: list[dict], **match) -> dict | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[0] if found else None


def check(by_suite: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target whose suite is in ``by_suite`` (name -> result)."""
    out: list[tuple[str, str, bool]] = []
    inference = by_suite.get("inference")
    if inference:
        r = _one(inference["results"], model=FULL_VGG_INFERENCE, path=ORT_SERVED)
        if r:
            out.append(("ONNX Runtime folded, batch 1: p50 at most 0.4x PyTorch eager",
                        f"{r['p50_ms']:.2f} ms vs {r['p50_ms'] / r['latency_ratio']:.2f} ms = "
                        f"{r['latency_ratio']:.3f}x", r["latency_ratio"] <= 0.4))
    serving = by_suite.get("serving")
    if serving:
        rows = [r for r in serving["results"] if r["model"] == FULL_VGG_SERVING]
        floor = serving["inprocess_p50_ms"].get(FULL_VGG_SERVING)
        c1 = _one(rows, service=OURS, concurrency=1)
        if c1 and floor is not None:
            extra = c1["p50_ms"] - floor
            out.append(("Serving, concurrency 1: p50 at most in-process ONNX Runtime p50 + 1.5 ms",
                        f"{c1['p50_ms']:.2f} ms vs {floor:.2f} ms = +{extra:.2f} ms", extra <= 1.5))
        c32 = _one(rows, service=OURS, concurrency=32)
        naive = next((r for r in rows if r["service"].startswith("naive") and r["concurrency"] == 32), None)
        if c32 and naive:
            ratio = c32["rps"] / naive["rps"]
            out.append(("Serving, concurrency 32: at least 2x the naive service's requests/s",
                        f"{c32['rps']:.0f} vs {naive['rps']:.0f} req/s = {ratio:.2f}x", ratio >= 2))
        if c32:
            total = c32["ok"] + c32["errors"]
            out.append(("Serving, concurrency 32: zero errors", f"{c32['errors']} of {total}",
                        c32["errors"] == 0))
            out.append(("Serving, concurrency 32: p99 under 150 ms", f"{c32['p99_ms']:.1f} ms",
                        c32["p99_ms"] < 150))
    peers = (serving or {}).get("peers")
    if peers:  # on the default model
        t = peers["totals"]
        ours = next(k for k in t if k.startswith("ours, ") and "default" in k and k.endswith(" c=32"))
        rps = {k: v["ok"] / v["wall"] for k, v in t.items()}
        tuned = next((v for k, v in rps.items() if k.startswith("LitServe, tuned") and k.endswith(" c=32")), None)
        floors = [(k, v) for k, v in rps.items() if k.startswith("bare uvicorn") and k.endswith(" c=32")]
        if tuned:
            out.append(("Peers, concurrency 32: ours at least 1.5x tuned LitServe",
                        f"{rps[ours]:.0f} vs {tuned:.0f} req/s = {rps[ours] / tuned:.2f}x", rps[ours] >= 1.5 * tuned))
        for k, v in floors:  # the same number of processes as ours: 1 worker vs 1, default vs default
            mine = "ours, 1 worker c=32" if ", 1 process" in k else ours
            if mine in rps:
                measured = (f"{rps[mine]:.0f} vs {v:.0f} req/s = {rps[mine] / v:.2f}x" if v > 0 else
                            f"{rps[mine]:.0f} req/s; the floor answered nothing (see its row's errors)")
                out.append((f"Peers, concurrency 32: {mine[:-5]} at least 0.8x the floor, {k.split('), ')[1][:-5]}",
                            measured, v > 0 and rps[mine] >= 0.8 * v))
        o = peers["overload"]
        lost = sum(v for k, v in o["kinds"].items() if k not in ("ok", "shed"))
        out.append((("Overload at 2x capacity (this suite's client, not pinned; the pinned traffic check, with refusal times: "
                     "[serving.md](serving.md#check-it)): admitted p99 under 500 ms, the rest 503, none reset or timed out"),
                     f"p99 {o['ok_p99_ms']:.0f} ms; {o['kinds'].get('shed', 0)} shed; {lost} other",
                     o["ok_p99_ms"] < 500 and lost == 0))
    training = by_suite.get("training")
    if training:
        mlps = [r for r in training["results"] if r["case"].startswith("Ioffe MLP")]
        if mlps:
            slowest = min(mlps, key=lambda r: r["ours"])
            out.append(("Training: the Ioffe MLP at least 1,000 steps/s",
                        "; ".join(f"{r['case']}: {r['ours']:,.0f} steps/s" for r in mlps),
                        slowest["ours"] >= 1000))
        seeds = training.get("seeds")
        if seeds:
            out.append((f"Training: {seeds['seeds']} seeds x 2 variants of ioffe-fig1 within 1.5x the wall time of 1 seed",
                        f"{seeds['ratio']:.2f}x at {seeds['steps']:,} steps", seeds["ratio"] <= 1.5))
    return out


def render(by_suite: dict[str, dict]) -> str:
    rows = [[t, m, "met" if ok else "**missed**"] for t, m, ok in check(by_suite)]
    return markdown_table(["target (full VGG-11 + BN at 32x32; peers: the default model)", "measured in this run", ""], rows) if rows else ""

"""Issue #6's targets, checked against the numbers of the same benchmark run (nothing typed in):
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
    training = by_suite.get("training")
    if training:
        mlps = [r for r in training["results"] if r["case"].startswith("Ioffe MLP")]
        if mlps:
            slowest = min(mlps, key=lambda r: r["ours"])
            out.append(("Training: the Ioffe MLP at least 1,000 steps/s",
                        "; ".join(f"{r['case']}: {r['ours']:,.0f} steps/s" for r in mlps),
                        slowest["ours"] >= 1000))
        seeds = training.get("seeds")
        if seeds:  # issue #11
            out.append((f"Training: {seeds['seeds']} seeds x 2 variants of ioffe-fig1 within 1.5x the wall time of 1 seed",
                        f"{seeds['ratio']:.2f}x at {seeds['steps']:,} steps", seeds["ratio"] <= 1.5))
    return out


def render(by_suite: dict[str, dict]) -> str:
    rows = [[t, m, "met" if ok else "**missed**"] for t, m, ok in check(by_suite)]
    return markdown_table(["target (issue #6, full VGG-11 + BN at 32x32)", "measured in this run", ""], rows) if rows else ""

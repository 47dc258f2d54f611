"""Inference in one process, same inputs for every path:

- PyTorch eager, eval mode, BN unfolded (the baseline of every ratio)
- PyTorch eager on the folded model (``export.fold_batchnorm``)
- ONNX Runtime on an unfolded export (BN kept in the graph, ``ORT_DISABLE_ALL``)
- ONNX Runtime on our folded file, optimisations disabled (the file exactly as written)
- ONNX Runtime on our folded file, ``ORT_ENABLE_ALL`` (what the service runs)

Batch-1 p50/p99 latency, batch-32 images/s, and achieved FLOP/s as a fraction of the CPU's
fp32 peak (cores x clock x FLOP/cycle from the ISA flags: an estimate, stated as such).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.models import create_model

from .common import cpu_model, markdown_table, summarize, time_calls

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "models" / "default" / "checkpoint.pt"


def cpu_peak_flops() -> tuple[float, str]:
    """fp32 peak estimate: cores x GHz x FLOP/cycle/core (2 FMA units x vector lanes x 2)."""
    flags, mhz = set(), 0.0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2  # two FMA ports, FMA = 2 FLOP
    cores = os.cpu_count() or 1
    ghz = (mhz or 2000.0) / 1000
    return cores * ghz * 1e9 * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"


def model_flops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def cases() -> list[tuple[str, nn.Module, tuple[int, int, int]]]:
    out = []
    if DEFAULT_CHECKPOINT.is_file():
        from training.checkpoint import load_checkpoint
        model, ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
        c = ckpt["model_config"]
        out.append((f"default model ({c['name']} + BN, width {c['width']})", model,
                    (c["in_channels"], c["image_size"], c["image_size"])))
    else:
        torch.manual_seed(0)
        out.append(("VGG-11 + BN, width 0.25, 28 px (no default model found)",
                    randomize_bn(create_model("vgg11", bn=True, width=0.25)), (1, 28, 28)))
    torch.manual_seed(0)
    out.append(("VGG-11 + BN, full width, 32x32x3",
                randomize_bn(create_model("vgg11", bn=True, in_channels=3, image_size=32)), (3, 32, 32)))
    out.append(("Ioffe MLP 3x100 + BN", randomize_bn(create_model("mlp3x100", bn=True)), (1, 28, 28)))
    return out


def ort_session(path: Path, optimized: bool):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = torch.get_num_threads()  # same threads as PyTorch: a fair race
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(quick: bool = False) -> dict:
    from export import fold_batchnorm, onnx_export

    peak, peak_formula = cpu_peak_flops()
    iters1, iters32, min_s = (30, 5, 0.0) if quick else (300, 40, 1.0)
    rows, results = [], []
    tmp = Path(tempfile.mkdtemp(prefix="bnserve-bench-"))
    for label, model, shape in cases():
        rng = np.random.default_rng(0)
        x1 = rng.standard_normal((1, *shape), dtype=np.float32)
        x32 = rng.standard_normal((32, *shape), dtype=np.float32)
        t1, t32 = torch.from_numpy(x1), torch.from_numpy(x32)
        folded, _ = fold_batchnorm(model, example_input=t1)
        unfolded_path = onnx_export(model, tmp / "unfolded.onnx", shape, keep_batchnorm=True)
        folded_path = onnx_export(folded, tmp / "folded.onnx", shape)
        flops1 = model_flops(folded, t1)

        def torch_fn(m, x):
            def f():
                with torch.inference_mode():
                    return m(x)
            return f

        def ort_fn(sess, x):
            return lambda: sess.run(["logits"], {"input": x})

        paths = [
            ("PyTorch eager, BN unfolded", torch_fn(model, t1), torch_fn(model, t32)),
            ("PyTorch, BN folded", torch_fn(folded, t1), torch_fn(folded, t32)),
        ]
        for name, p, opt in (("ORT, BN in graph, no optimisation", unfolded_path, False),
                             ("ORT, our folded file, no optimisation", folded_path, False),
                             ("ORT, our folded file, ORT_ENABLE_ALL", folded_path, True)):
            s = ort_session(p, opt)
            paths.append((name, ort_fn(s, x1), ort_fn(s, x32)))
        base_p50 = base_ips = None
        for name, f1, f32 in paths:
            # at least iters calls and at least min_s seconds: the MLP's calls take microseconds
            lat = summarize(time_calls(f1, warmup=10, iters=iters1, min_seconds=min_s))
            thr_times = time_calls(f32, warmup=3, iters=iters32, min_seconds=min_s)
            ips = 32 / (sum(thr_times) / len(thr_times))
            if base_p50 is None:
                base_p50, base_ips = lat["p50_ms"], ips
            frac = flops1 / (lat["p50_ms"] / 1e3) / peak
            frac32 = flops1 * ips / peak
            results.append({"model": label, "path": name, **lat, "images_per_s_b32": ips,
                            "latency_ratio": lat["p50_ms"] / base_p50, "throughput_ratio": ips / base_ips,
                            "peak_fraction_b1": frac, "peak_fraction_b32": frac32, "flops_per_image": flops1})
            rows.append([label, name, round(lat["p50_ms"], 3), round(lat["p99_ms"], 3),
                         f"{lat['p50_ms'] / base_p50:.3g}x", round(ips), f"{ips / base_ips:.3g}x",
                         f"{100 * frac:.1f}%", f"{100 * frac32:.1f}%"])
            print(f"  {label} | {name}: p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, "
                  f"b32 {ips:,.0f} img/s", flush=True)
    table = markdown_table(["model", "path", "b1 p50 ms", "b1 p99 ms", "p50 vs eager", "b32 img/s",
                            "b32 vs eager", "b1 % peak", "b32 % peak"], rows)
    note = (f"{torch.get_num_threads()} threads for PyTorch and ONNX Runtime alike; "
            f"fp32 peak estimated as {peak_formula} = {peak / 1e9:,.0f} GFLOP/s ({cpu_model()}); "
            f"FLOPs per image counted by torch.utils.flop_counter on the folded model. "
            f"Ratios: p50 latency and images/s relative to PyTorch eager (BN unfolded), same inputs.")
    return {"name": "inference", "results": results, "table": table, "note": note, "intro": __doc__}

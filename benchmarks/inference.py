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

from serving.contract import INPUT_NAME, OUTPUT_NAME
from training.models import create_model, randomize_bn

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
                    randomize_bn(create_model("vgg11", bn=True, width=0.25)).eval(), (1, 28, 28)))
    torch.manual_seed(0)
    out.append(("VGG-11 + BN, full width, 32x32x3",
                randomize_bn(create_model("vgg11", bn=True, in_channels=3, image_size=32)).eval(), (3, 32, 32)))
    out.append(("Ioffe MLP 3x100 + BN", randomize_bn(create_model("mlp3x100", bn=True)).eval(), (1, 28, 28)))
    return out


def ort_session(path: Path, optimized: bool, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                profile_prefix: Path | None = None):
    """Every ONNX Runtime session of this benchmark: PyTorch's thread count (a fair race),
    ``ORT_ENABLE_ALL`` or ``ORT_DISABLE_ALL``, and its own profiler when ``profile_prefix``."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = torch.get_num_threads()  # same threads as PyTorch: a fair race
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), so, providers=list(providers))


COMPUTE_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def layer_costs(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Conv and Linear layers in execution order: multiply-adds and weight bytes per image."""
    out: list[dict] = []

    def hook(module, _inputs, output):
        w = module.weight
        if isinstance(module, nn.Conv2d):
            macs = output[0].numel() * w.shape[1] * w.shape[2] * w.shape[3]
            shape = f"conv {w.shape[1] * module.groups}->{w.shape[0]} @ {output.shape[-2]}x{output.shape[-1]}"
        else:
            macs, shape = w.numel(), f"linear {w.shape[1]}->{w.shape[0]}"
        params = w.numel() + (module.bias.numel() if module.bias is not None else 0)
        out.append({"layer": shape, "macs": macs, "weight_bytes": params * w.element_size()})

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return out


def ort_node_times(path: Path, x: np.ndarray, runs: int) -> list[tuple[str, str, float]]:
    """(node, op, median microseconds) of every node of ONNX Runtime's optimised graph, in
    execution order, from its own profiler (``ORT_ENABLE_ALL``, the service's settings)."""
    import json

    sess = ort_session(path, True, profile_prefix=path.parent / "ort-profile")
    for _ in range(runs):
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    last_run = [e for e in events if e.get("name") == "model_run"][-1]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    durations: dict[str, list[float]] = {}
    for e in nodes:
        durations.setdefault(e["name"], []).append(e["dur"])
    order = sorted((e["ts"], e["name"], e["args"]["op_name"]) for e in nodes
                   if last_run["ts"] <= e["ts"] <= last_run["ts"] + last_run["dur"])
    return [(name.removesuffix("_kernel_time"), op, float(np.median(durations[name])))
            for _, name, op in order]


def layer_profile(model: nn.Module, path: Path, x: np.ndarray, runs: int) -> tuple[str, dict]:
    """Where ONNX Runtime's batch-1 time goes, layer by layer: achieved GFLOP/s, and the rate
    at which each layer's weights are read (a batch-1 conv reads all of them once per image)."""
    nodes = ort_node_times(path, x, runs)
    layers = layer_costs(model, torch.from_numpy(x))
    compute = [n for n in nodes if n[1] in COMPUTE_OPS]
    total_us = sum(us for _, _, us in nodes)
    rows = []
    if len(compute) != len(layers):  # an unexpected graph: list the nodes without the arithmetic
        return markdown_table(["node", "op", "median us"], [[n, op, round(us, 1)] for n, op, us in nodes]), {}
    for (name, op, us), layer in zip(compute, layers, strict=True):
        rows.append([layer["layer"], f"{op} `{name}`", round(us, 1), f"{100 * us / total_us:.1f}%",
                     round(2 * layer["macs"] / us / 1e3, 1), round(layer["weight_bytes"] / 2**20, 2),
                     round(layer["weight_bytes"] / us / 1e3, 1)])
    rest = total_us - sum(us for _, _, us in compute)
    rows.append(["everything else (pooling, reorders, reshape)", "", round(rest, 1), f"{100 * rest / total_us:.1f}%",
                 "", "", ""])
    table = markdown_table(["layer", "ORT node", "median us", "share", "GFLOP/s", "weights MiB",
                            "weights GB/s"], rows)
    return table, {"nodes": nodes, "layers": layers, "total_us": total_us}


def gpu_paths(model: nn.Module, folded_path: Path, x1: np.ndarray, x32: np.ndarray) -> list:
    """When a GPU is present: PyTorch eager on CUDA (synchronised per call) and ONNX Runtime's
    CUDA provider on our folded file (its run() returns host arrays, so it is synchronous)."""
    import copy

    import onnxruntime as ort
    out = []
    if torch.cuda.is_available():
        m = copy.deepcopy(model).cuda().eval()
        g1, g32 = torch.from_numpy(x1).cuda(), torch.from_numpy(x32).cuda()

        def cuda_fn(x):
            def f():
                with torch.inference_mode():
                    y = m(x)
                torch.cuda.synchronize()
                return y
            return f
        out.append(("PyTorch eager, BN unfolded, CUDA", cuda_fn(g1), cuda_fn(g32)))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        sess = ort_session(folded_path, True, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
        if sess.get_providers()[0] == "CUDAExecutionProvider":  # it falls back to CPU silently
            out.append(("ORT, our folded file, CUDA provider",
                        lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: x1}),
                        lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: x32})))
        else:
            print("  (CUDAExecutionProvider is installed but did not start: no ORT CUDA row)", flush=True)
    return out


def run(quick: bool = False) -> dict:
    from export import fold_batchnorm, onnx_export

    peak, peak_formula = cpu_peak_flops()
    iters1, iters32, min_s = (30, 5, 0.0) if quick else (300, 40, 1.0)
    rows, results = [], []
    profile_table = profile = None
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
            return lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: x})

        paths = [
            ("PyTorch eager, BN unfolded", torch_fn(model, t1), torch_fn(model, t32)),
            ("PyTorch, BN folded", torch_fn(folded, t1), torch_fn(folded, t32)),
        ]
        for name, p, opt in (("ORT, BN in graph, no optimisation", unfolded_path, False),
                             ("ORT, our folded file, no optimisation", folded_path, False),
                             ("ORT, our folded file, ORT_ENABLE_ALL", folded_path, True)):
            s = ort_session(p, opt)
            paths.append((name, ort_fn(s, x1), ort_fn(s, x32)))
        paths += gpu_paths(model, folded_path, x1, x32)
        base_p50 = base_ips = None
        for name, f1, f32 in paths:
            # at least iters calls and at least min_s seconds: the MLP's calls take microseconds
            lat = summarize(time_calls(f1, warmup=10, iters=iters1, min_seconds=min_s))
            thr_times = time_calls(f32, warmup=3, iters=iters32, min_seconds=min_s)
            ips = 32 / (sum(thr_times) / len(thr_times))
            if base_p50 is None:
                base_p50, base_ips = lat["p50_ms"], ips
            on_gpu = "CUDA" in name  # the CPU's peak says nothing about these rows
            frac = float("nan") if on_gpu else flops1 / (lat["p50_ms"] / 1e3) / peak
            frac32 = float("nan") if on_gpu else flops1 * ips / peak
            results.append({"model": label, "path": name, **lat, "images_per_s_b32": ips,
                            "latency_ratio": lat["p50_ms"] / base_p50, "throughput_ratio": ips / base_ips,
                            "peak_fraction_b1": frac, "peak_fraction_b32": frac32, "flops_per_image": flops1})
            rows.append([label, name, round(lat["p50_ms"], 3), round(lat["p99_ms"], 3),
                         f"{lat['p50_ms'] / base_p50:.3g}x", round(ips), f"{ips / base_ips:.3g}x",
                         "-" if on_gpu else f"{100 * frac:.1f}%", "-" if on_gpu else f"{100 * frac32:.1f}%"])
            print(f"  {label} | {name}: p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, "
                  f"b32 {ips:,.0f} img/s", flush=True)
        if "full width" in label:
            profile_table, profile = layer_profile(folded, folded_path, x1, 50 if quick else 500)
    table = markdown_table(["model", "path", "b1 p50 ms", "b1 p99 ms", "p50 vs eager", "b32 img/s",
                            "b32 vs eager", "b1 % peak", "b32 % peak"], rows)
    note = (f"{torch.get_num_threads()} threads for PyTorch and ONNX Runtime alike; "
            f"fp32 peak estimated as {peak_formula} = {peak / 1e9:,.0f} GFLOP/s ({cpu_model()}); "
            f"FLOPs per image counted by torch.utils.flop_counter on the folded model. "
            f"Ratios: p50 latency and images/s relative to PyTorch eager (BN unfolded), same inputs.")
    if profile_table:
        table += ("\n\n### Where ONNX Runtime's batch-1 time goes (full VGG-11 + BN, our folded file)\n\n"
                  "ONNX Runtime's own profiler, median per node over the runs, ``ORT_ENABLE_ALL``, same "
                  "threads. A batch-1 layer reads each of its weights once per image, so the late "
                  "512-channel layers at 4x4 and 2x2 run at the rate their weights stream from memory "
                  "(weights GB/s), not at the arithmetic rate of the early layers (GFLOP/s).\n\n"
                  + profile_table)
    return {"name": "inference", "results": results, "table": table, "note": note, "intro": __doc__,
            "ort_profile": profile}

"""``python -m export CHECKPOINT -o OUT.onnx [--opset N] [--fp16]``: fold, export, verify, and
print a one-screen report. Expected failures print one error and exit 2 (no traceback)."""

from __future__ import annotations

import argparse
import sys

from .errors import ExportError
from .onnx_export import DEFAULT_OPSET
from .pipeline import export_checkpoint


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Fold every BatchNorm into the preceding conv/linear layer, export ONNX with "
                    "a dynamic batch axis and bnserve metadata, and verify the file as written "
                    "(onnx.checker, no BatchNormalization node, parity with the PyTorch eval "
                    "model in ONNX Runtime with optimisations off). A failing model is not written.")
    p.add_argument("checkpoint", help="a bnserve checkpoint.pt (from `python -m training ...`)")
    p.add_argument("-o", "--out", required=True, help="where to write the .onnx file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights, input and output (looser stated parity tolerance)")
    p.add_argument("--data-dir", default=None,
                   help="where the checkpoint's dataset lives (default: the usual look-up; never downloads)")
    p.add_argument("--max-images", type=_positive, default=None,
                   help="check parity on the first N test images only (default: the whole split)")
    return p


def format_report(meta: dict) -> str:
    rep, par, fold = meta["report"], meta["parity"], meta["fold_report"]
    cfg = meta["model"]["config"]
    t = rep["timings_s"]
    tol = par["tolerance"]
    pairs = [f"{f['bn']}->{f['into']}" for f in fold["folded"]]
    folded = ", ".join(pairs[:4]) + (f", ... ({len(pairs) - 4} more)" if len(pairs) > 4 else "") or "-"
    lp = cfg.get("lp_norm") or ""
    lines = [
        f"model      {cfg['name']} (bn={cfg['bn']}, noisy_bn={cfg['noisy_bn']}"
        + (f", lp_norm={lp}" if lp else "") + f"), dataset "
        f"{meta['dataset']}, checkpoint test accuracy {meta['test_accuracy']}",
        f"checkpoint {meta['source_checkpoint']['file']} sha256 {meta['source_checkpoint']['sha256'][:16]}...",
        f"fold       {fold['batchnorms']} BatchNorm: {len(fold['folded'])} folded, "
        f"{len(fold['scale_shift'])} scale-shift, {len(fold['not_in_graph'])} not in graph",
        f"           folded: {folded}",
    ]
    if lp:  # Santurkar Sec. 3.3: not a BatchNorm, so nothing of it is folded
        lines.append(f"           l_p normalisation ({lp}) is not a BatchNorm: not folded; in eval mode it is "
                     "(x - running_mean) / running_norm * gamma + beta, exported as Sub/Div/Mul/Add")
    lines += [f"           scale-shift {s['bn']}: {s['reason']}" for s in fold["scale_shift"][:5]]
    ops = ", ".join(f"{k} {v}" for k, v in rep["op_counts"].items())
    lines += [
        f"onnx       opset {meta['opset']}, {meta['precision']}, input {meta['input']['name']} "
        f"{meta['input']['shape']} -> {meta['output']['name']} {meta['output']['shape']}",
        f"           nodes: {ops}",
        f"           BatchNormalization nodes: {rep['batchnorm_nodes']}",
        f"checker    {rep['checker']}",
        f"parity     {par['inputs']}; reference: {par['reference']}",
        f"           ONNX Runtime {par['ort_graph_optimization']}, batch sizes {par['batch_sizes']}",
        f"           max |diff| {par['max_abs_diff']:.3g} (max |logit| {par['max_abs_logit']:.3g}); "
        f"tolerance atol {tol['atol']:g}, rtol {tol['rtol']:g}",
        f"           argmax agreement {par['argmax_agreement']}/{par['n']} "
        f"({par['ambiguous']} ambiguous by top-2 margin)",
        f"           batch 1 ({par['batch1_images']} images): max |diff| vs reference "
        f"{par['batch1_max_abs_diff_vs_reference']:.3g}, vs their rows in a batch "
        f"{par['batch1_max_abs_diff_vs_batch_row']:.3g}",
    ]
    if "onnx_accuracy" in par:
        lines.append(f"           accuracy ONNX {par['onnx_accuracy']:.4f}, PyTorch {par['torch_accuracy']:.4f}")
    lines += [
        f"result     PASSED: wrote {rep['path']} ({rep['bytes'] / 1024:.0f} KiB, sha256 {rep['sha256'][:16]}...)",
        f"time       fold {t['fold']:.2f} s, export {t['export']:.2f} s, verify {t['verify']:.2f} s, "
        f"total {t['total']:.2f} s",
        f"provenance version {meta['version']}, git {meta['git_revision']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        meta = export_checkpoint(args.checkpoint, args.out, opset=args.opset, fp16=args.fp16,
                                 data_dir=args.data_dir, max_images=args.max_images)
    except ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 2
    print(format_report(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

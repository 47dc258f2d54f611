"""``python -m studies bn-test-time RUN_DIR|CKPT``: what does BN do for one image at test time?

The variance of one value is undefined, so BN cannot normalise a single image with its own
statistics. This measures, on a trained BN network, the test accuracy when BN normalises with

  (i)   the stored statistics: eval mode in PyTorch, and the exported ONNX file (BN folded);
  (ii)  the statistics of the test mini-batch itself (training-mode BN, running statistics left
        alone), for test batch sizes 1, 2, 4, ..., 1024;
  (iii) in detail the batch of one: a BN layer whose channel has a single value in the batch
        (every BatchNorm1d; a BatchNorm2d on a 1x1 feature map) computes x - mu_B = 0 and
        outputs beta whatever the image, so every image gets the same answer.

and checks that the exported file gives each image bit-identical logits alone and inside a
batch of other images (ONNX Runtime CPU, the service's session settings).

Writes ``figure.png`` (accuracy vs test batch size, the eval-mode line across it),
``summary.md`` and ``results.json`` into ``--out`` (default ``<run dir>/bn-test-time``).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.pipeline import export_checkpoint, read_metadata
from serving.model import OnnxClassifier
from training.checkpoint import batchnorms, file_sha256, load_checkpoint
from training.data import Normalizer, load_dataset
from training.plotting import pyplot
from training.recalibrate import input_transform
from training.records import preset_of, write_json
from training.runs import finish_run, start_run

BATCH_SIZES = tuple(2 ** k for k in range(11))  # 1 .. 1024


def _batch_stats_forward(bn: nn.modules.batchnorm._BatchNorm):
    def forward(x: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        mu = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)  # sigma_B^2, as training normalises
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mu) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)
    return forward


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Inside: every BN normalises with the statistics of the batch it is given (training-mode
    BN without noise, for any batch size, 1 included), and no running statistic moves."""
    bns = batchnorms(model)
    for bn in bns:
        bn.forward = _batch_stats_forward(bn)
    try:
        yield model
    finally:
        for bn in bns:
            del bn.forward


@torch.no_grad()
def logits_in_batches(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def values_per_channel(model: nn.Module, example: torch.Tensor) -> list[int]:
    """For each BN layer, how many values one channel has in a batch of ``len(example)``
    images: the m of its mini-batch statistics."""
    seen: list[int] = []
    handles = [bn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].numel() // inp[0].shape[1]))
               for bn in batchnorms(model)]
    with torch.no_grad():
        model(example)
    for h in handles:
        h.remove()
    return seen


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the BN network's checkpoint inside a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "checkpoint.pt", path / "bn" / "checkpoint.pt", path / "bn_lr0.1" / "checkpoint.pt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint at {path} (looked for checkpoint.pt, bn/checkpoint.pt); "
                            "give the checkpoint file")


def onnx_for(checkpoint: Path, workdir: Path, data_dir=None) -> tuple[Path, str]:
    """The exported file of ``checkpoint``: a ``model.onnx`` beside it made from this very
    checkpoint (its metadata names the checkpoint's sha256), else a fresh export."""
    beside = checkpoint.with_name("model.onnx")
    if beside.is_file():
        try:
            if read_metadata(beside)["source_checkpoint"]["sha256"] == file_sha256(checkpoint):
                return beside, f"{beside} (exported from this checkpoint)"
        except Exception:  # noqa: BLE001 - not ours or unreadable: export afresh
            pass
    out = workdir / "model.onnx"
    export_checkpoint(checkpoint, out, data_dir=data_dir, max_images=512)
    return out, "exported afresh by this command (python -m export pipeline)"


def bit_identity(onnx_path: Path, x: np.ndarray, batch: int = 64) -> dict:
    """Each image alone (batch of 1) vs the same image inside batches of ``batch`` other
    images, on the service's ONNX Runtime session (serving.model.OnnxClassifier, CPU)."""
    clf = OnnxClassifier(onnx_path, want="cpu")
    n = len(x) - len(x) % batch
    x = x[:n]
    inside = np.concatenate([clf(x[i:i + batch]) for i in range(0, n, batch)])
    # the same images again, shifted by half a batch: another position, other neighbours
    shifted = np.concatenate([clf(x[i:i + batch]) for i in range(batch // 2, n - batch, batch)])
    alone = np.concatenate([clf(x[i:i + 1]) for i in range(n)])
    same = (alone == inside).all(1)
    same_shift = (alone[batch // 2:n - batch // 2] == shifted).all(1)
    return {"images": int(n), "batch": batch, "provider": clf.provider, "threads": clf.threads,
            "identical_alone_vs_batch": int(same.sum()),
            "identical_alone_vs_shifted_batch": int(same_shift.sum()), "shifted_images": int(len(shifted)),
            "max_abs_diff": float(np.abs(alone - inside).max()) if n else 0.0,
            "all_identical": bool(same.all() and same_shift.all())}


def measure(checkpoint: str | Path, *, data_dir=None, images: int | None = None,
            batch_sizes=BATCH_SIZES, onnx: bool = True, workdir: Path | None = None) -> dict:
    ckpt_path = resolve_checkpoint(checkpoint)
    model, ckpt = load_checkpoint(ckpt_path)
    if not batchnorms(model):
        raise ValueError(f"{ckpt_path}: the model has no BatchNorm layer; give the BN network's checkpoint")
    data = ckpt["data"]
    ds = load_dataset(data["dataset"], data_dir, progress=False)
    conv = input_transform(ckpt)
    test_u8 = ds.test.images if images is None else ds.test.images[:images]
    labels = ds.test.labels[:len(test_u8)]
    x = Normalizer(data["mean"], data["std"])(conv(test_u8) if conv else test_u8)
    y = labels

    def acc(logits: torch.Tensor) -> float:
        return float((logits.argmax(1) == y).double().mean())

    eval_mode, train_mode = {}, {}
    model.eval()
    for b in batch_sizes:
        eval_mode[b] = acc(logits_in_batches(model, x, b))
        with batch_statistics(model):
            logits = logits_in_batches(model, x, b)
        train_mode[b] = acc(logits)
        if b == 1:
            one = logits
    preds = one.argmax(1)
    counts = torch.bincount(preds, minlength=len(data["classes"]))
    top = int(counts.argmax())
    per_layer_m = values_per_channel(model, x[:1])
    class_freq = torch.bincount(y, minlength=len(data["classes"])).double() / len(y)
    result = {
        "checkpoint": str(ckpt_path), "model": ckpt["model_config"], "dataset": data["dataset"],
        "bn_statistics": (ckpt.get("bn_statistics") or {}).get("estimate", "ema"),
        "binarized_input": bool(conv), "images": len(y), "batch_sizes": list(batch_sizes),
        "eval_mode_accuracy": {str(b): a for b, a in eval_mode.items()},
        "train_mode_accuracy": {str(b): a for b, a in train_mode.items()},
        "batch_of_one": {
            "distinct_predictions": int((counts > 0).sum()),
            "predicted_class": data["classes"][top], "share_of_images": float(counts[top]) / len(y),
            "max_abs_logit_spread": float((one - one[:1]).abs().max()),
            "values_per_channel_at_batch_1": per_layer_m,
            "collapsed_layers": [i + 1 for i, m in enumerate(per_layer_m) if m == 1],
            "chance_level_of_that_class": float(class_freq[top]),
        },
    }
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path, how = onnx_for(ckpt_path, Path(workdir or tmp), data_dir)
            xn = x.numpy()
            clf = OnnxClassifier(path, want="cpu")
            onnx_logits = np.concatenate([clf(xn[i:i + 256]) for i in range(0, len(xn), 256)])
            result["onnx"] = {"file": how, "accuracy": float((onnx_logits.argmax(1) == y.numpy()).mean()),
                              "bit_identity": bit_identity(path, xn[:1024])}
    return result


def plot(result: dict, out: Path) -> Path:
    plt = pyplot()
    bs = result["batch_sizes"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(bs, [result["train_mode_accuracy"][str(b)] for b in bs], "o-", color="tab:red",
            label="BN with the test batch's own statistics")
    ax.plot(bs, [result["eval_mode_accuracy"][str(b)] for b in bs], "s--", color="tab:blue",
            label=f"eval mode (stored {result['bn_statistics']} statistics)")
    if "onnx" in result:
        ax.axhline(result["onnx"]["accuracy"], color="tab:green", lw=0.8, ls=":", label="exported ONNX file")
    one = result["batch_of_one"]
    ax.axhline(one["chance_level_of_that_class"], color="gray", lw=0.8, ls="-.",
               label=f"every image called '{one['predicted_class']}'")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="test batch size", ylabel="test accuracy", ylim=(0, 1.02),
           title=f"BN at test time: {result['model']['name']}"
                 + (" + BN" if result["model"].get("bn") else "") + f", {result['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def summary(result: dict) -> str:
    bs = result["batch_sizes"]
    one = result["batch_of_one"]
    ev = [result["eval_mode_accuracy"][str(b)] for b in bs]
    lines = [
        "# BN at test time: one image",
        "",
        f"Checkpoint: `{result['checkpoint']}` ({result['model']['name']}, {result['dataset']}"
        + (", binary input" if result["binarized_input"] else "")
        + f"; BN buffers hold {result['bn_statistics']} statistics); {result['images']:,} test images.",
        "",
        "| test batch size | " + " | ".join(str(b) for b in bs) + " |",
        "|---|" + "---|" * len(bs),
        "| BN with the batch's own statistics | " + " | ".join(f"{result['train_mode_accuracy'][str(b)]:.4f}" for b in bs) + " |",
        "| eval mode (stored statistics) | " + " | ".join(f"{a:.4f}" for a in ev) + " |",
        "",
        f"Eval mode is {'the same at every batch size' if len(set(ev)) == 1 else 'NOT the same at every batch size'} "
        f"({min(ev):.4f} - {max(ev):.4f}).",
    ]
    if "onnx" in result:
        o = result["onnx"]
        bi = o["bit_identity"]
        lines += [f"Exported ONNX file ({o['file']}): test accuracy {o['accuracy']:.4f}.",
                  f"Bit-identity on ONNX Runtime ({bi['provider']}, {bi['threads']} threads, the service's "
                  f"session settings): of {bi['images']} images, {bi['identical_alone_vs_batch']} give "
                  f"bit-identical logits alone and inside a batch of {bi['batch']}, "
                  f"{bi['identical_alone_vs_shifted_batch']} of {bi['shifted_images']} inside a batch shifted by "
                  f"half (other neighbours); max |diff| {bi['max_abs_diff']:.3g}."
                  + (" Holds." if bi["all_identical"] else " Does NOT hold.")]
    lines += [
        "",
        "## The batch of one",
        "",
        f"Values per channel in each BN layer for one image: {one['values_per_channel_at_batch_1']}. "
        + (f"BN layer(s) {one['collapsed_layers']} see one value per channel: x - mu_B = 0 and sigma_B^2 = 0, so "
           "the normalised value is 0 / sqrt(eps) = 0 and the layer outputs beta whatever the image."
           if one["collapsed_layers"] else "No BN layer sees a single value per channel."),
        f"With the batch's own statistics at batch size 1, the {result['images']:,} test images get "
        f"{one['distinct_predictions']} distinct answer(s): '{one['predicted_class']}' for "
        f"{one['share_of_images']:.1%} of them; the logits differ across images by at most "
        f"{one['max_abs_logit_spread']:.3g}. Accuracy {result['train_mode_accuracy']['1']:.4f} = the share of "
        f"'{one['predicted_class']}' in the test set ({one['chance_level_of_that_class']:.4f}): chance level.",
        "",
        "So BN at test time does not normalise one image with its own statistics: it uses stored "
        "population statistics (a fixed affine map, folded into the layer before in the exported "
        "file), which is why the answer for an image does not depend on the batch it came in.",
        "",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a run directory (its BN network's checkpoint) or a checkpoint file")
    p.add_argument("--out", default=None, help="output directory (default: <run dir>/bn-test-time)")
    p.add_argument("--images", type=int, default=None, help="first N test images only (default: all)")
    p.add_argument("--max-batch", type=int, default=1024, help="largest test batch size (default: 1024)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the exported ONNX file (default: on)")
    p.add_argument("--data-dir", default=None, help="dataset directory (see docs/reproduction.md, \"Data\")")


def main(args: argparse.Namespace) -> int:
    # Thousands of one-image passes: one thread. With two, a busy second core turns every tiny
    # op into an OpenMP wait (measured: 17 s alone, 5 min beside another job).
    torch.set_num_threads(1)
    ckpt = resolve_checkpoint(args.path)
    out = Path(args.out) if args.out else ckpt.parent / "bn-test-time"
    out.mkdir(parents=True, exist_ok=True)
    sizes = tuple(b for b in BATCH_SIZES if b <= args.max_batch)
    config = {"checkpoint": str(ckpt), "dataset": load_checkpoint(ckpt)[1]["data"]["dataset"],
              "images": args.images, "max_batch": args.max_batch, "onnx": args.onnx, "data_dir": args.data_dir}
    start_run(out, "bn-test-time", config, preset=preset_of(ckpt), module="studies")  # a run the report reads
    result = measure(ckpt, data_dir=args.data_dir, images=args.images, batch_sizes=sizes, onnx=args.onnx)
    write_json(out / "results.json", result)
    plot(result, out / "figure.png")
    (out / "summary.md").write_text(summary(result))
    print((out / "summary.md").read_text())
    finish_run(out)
    print(f"Written to {out}/: figure.png, summary.md, results.json")
    return 0

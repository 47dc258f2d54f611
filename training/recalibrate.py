"""``python -m training recalibrate CKPT``: Algorithm 2 of Ioffe & Szegedy 2015, the inference
network's BN statistics.

PyTorch keeps an exponential moving average (momentum 0.1) of mini-batch statistics gathered
while the weights were still changing. The paper's inference network instead uses population
statistics of the *final* weights: with the training network frozen (each BN normalising with
its own mini-batch's statistics, as in training), process many training mini-batches B of size
m and set, per channel,

    E[x] = E_B[mu_B],    Var[x] = m / (m - 1) * E_B[sigma_B^2]

(for a conv layer m counts every value of a channel in the batch, m = batch * height * width,
Sec. 3.2). The command stores them in a new checkpoint, recording the estimate it holds
(``bn_statistics``), and reports test accuracy with the EMA and with the population statistics.
The exporter folds whatever the checkpoint holds and says which in the ONNX metadata.

The noisy BN of Santurkar et al. (Fig. 2) adds its noise after normalising, in training only.
``--noise`` (the default) keeps it during the passes, so the statistics are those of the
training network exactly as Algorithm 2 defines it; ``--no-noise`` gathers them with the noise
off, i.e. for the network that inference runs.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import POPULATION, batchnorms, load_checkpoint, save_checkpoint
from .data import BatchSampler, Normalizer, get_spec, load_dataset
from .ioffe.train import binarize
from .loop import evaluate
from .records import preset_of, write_json
from .runs import finish_run, start_run


@torch.no_grad()
def population_statistics(model: nn.Module, batches: Iterable[torch.Tensor], noise: bool = True
                          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Algorithm 2, steps 8-11: for each BN layer of ``model`` (in ``model.modules()`` order),
    ``(E_B[mu_B], m/(m-1) E_B[sigma_B^2])`` over ``batches`` (already normalised inputs), with the
    training network (batch statistics) and frozen weights. ``model`` is not modified."""
    net = copy.deepcopy(model).train()  # train-mode passes would move the original's buffers
    bns = batchnorms(net)
    if not bns:
        raise ValueError("the model has no BatchNorm layer: there are no statistics to recalibrate")
    if not noise:
        for bn in bns:  # NoisyBatchNorm2d without its training-time noise is exactly BatchNorm2d
            if type(bn) is not nn.BatchNorm2d and isinstance(bn, nn.BatchNorm2d):
                bn.__class__ = nn.BatchNorm2d
    sums = [[0.0, 0.0] for _ in bns]
    counts = [0] * len(bns)
    m = [0] * len(bns)

    def hook(i):
        def pre(_module, inputs):
            x = inputs[0].double()
            dims = [d for d in range(x.dim()) if d != 1]
            sums[i][0] = sums[i][0] + x.mean(dims)
            sums[i][1] = sums[i][1] + x.var(dims, unbiased=False)  # sigma_B^2
            counts[i] += 1
            m[i] = x.numel() // x.shape[1]
        return pre

    handles = [bn.register_forward_pre_hook(hook(i)) for i, bn in enumerate(bns)]
    try:
        for x in batches:
            net(x)
    finally:
        for h in handles:
            h.remove()
    if not counts[0]:
        raise ValueError("no batches given")
    if min(m) < 2:
        raise ValueError("batches of one value per channel have no variance; use a batch size of at least 2")
    return [((s_mu / n).float(), (mi / (mi - 1) * s_var / n).float())
            for (s_mu, s_var), n, mi in zip(sums, counts, m, strict=True)]


@torch.no_grad()
def apply_statistics(model: nn.Module, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Write ``stats`` into the BN layers' running_mean / running_var (in place)."""
    bns = batchnorms(model)
    if len(bns) != len(stats):
        raise ValueError(f"{len(stats)} statistics for {len(bns)} BatchNorm layers")
    for bn, (mean, var) in zip(bns, stats, strict=True):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return model


def input_transform(ckpt: dict):
    """The conversion a run applied to its uint8 images before normalising (the Ioffe MLP's
    binary input), else None."""
    if ckpt.get("run", {}).get("binarize"):
        return binarize
    return None


def training_batches(ckpt: dict, data_dir, n_batches: int, batch_size: int, seed: int, device):
    """``n_batches`` training mini-batches (uint8 -> the checkpoint's normalisation), drawn
    without replacement within an epoch as in training."""
    data = ckpt["data"]
    ds = load_dataset(data["dataset"], data_dir, progress=False)
    norm = Normalizer(data["mean"], data["std"], device)
    conv = input_transform(ckpt)
    train = ds.train.to(device)
    sampler = BatchSampler(len(train), batch_size, seed, device)
    for _ in range(n_batches):
        images, _labels = train.batch(sampler.next_indices())
        yield norm(conv(images) if conv else images)


def test_accuracy(model: nn.Module, ckpt: dict, data_dir, device) -> float:
    data = ckpt["data"]
    ds = load_dataset(data["dataset"], data_dir, progress=False)
    conv = input_transform(ckpt)
    images = ds.test.images.to(device)
    return evaluate(model.to(device), conv(images) if conv else images, ds.test.labels.to(device),
                    Normalizer(data["mean"], data["std"], device)).item()


def default_out(checkpoint: Path, suffix: str = "") -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}-population{suffix}{checkpoint.suffix}")


def has_noisy_bn(model: nn.Module) -> bool:
    return any(type(bn).__name__.startswith("Noisy") for bn in batchnorms(model))


def recalibrate(checkpoint: str | Path, out: str | Path | None = None, *, batches: int = 200,
                batch_size: int | None = None, noise: bool = True, seed: int = 0, data_dir=None,
                device: str = "cpu") -> dict:
    """Algorithm 2 on a checkpoint: writes ``out`` (default ``<stem>-population.pt``) holding the
    population statistics; returns the record stored as its ``bn_statistics``."""
    checkpoint = Path(checkpoint)
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    if (ckpt.get("bn_statistics") or {}).get("estimate") == POPULATION:
        raise ValueError(f"{checkpoint} already holds population statistics; recalibrate the EMA "
                         "checkpoint it was made from")
    run_cfg = ckpt.get("run", {}).get("config", {}) or {}
    m = batch_size or int(run_cfg.get("batch_size", 60))
    dev = torch.device(device)
    ema_acc = test_accuracy(model, ckpt, data_dir, dev)
    stats = population_statistics(model, training_batches(ckpt, data_dir, batches, m, seed, dev), noise=noise)
    apply_statistics(model, stats)
    pop_acc = test_accuracy(model, ckpt, data_dir, dev)
    noisy = has_noisy_bn(model)
    record = {"estimate": POPULATION, "algorithm": "Ioffe & Szegedy 2015, Algorithm 2",
              "batches": batches, "batch_size": m, "seed": seed,
              "noise": noise if noisy else None,
              "ema_test_accuracy": ema_acc, "population_test_accuracy": pop_acc,
              "what": "E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2] over training mini-batches, "
                      "final weights, training-mode network"}
    out = Path(out) if out else default_out(checkpoint)
    spec = get_spec(ckpt["data"]["dataset"])
    save_checkpoint(out, model.cpu(), spec, test_accuracy=pop_acc, step=ckpt.get("step"),
                    run={**ckpt.get("run", {}), "recalibrated_from": str(checkpoint)}, bn_statistics=record)
    return {**record, "checkpoint": str(checkpoint), "out": str(out), "model": ckpt["model_config"]["name"],
            "dataset": ckpt["data"]["dataset"]}


def report_line(r: dict) -> str:
    noise = "" if r["noise"] is None else (", noise on" if r["noise"] else ", noise off")
    return (f"| {r['checkpoint']} | {r['model']} | {r['ema_test_accuracy']:.4f} | "
            f"{r['population_test_accuracy']:.4f} | {r['batches']} x {r['batch_size']}{noise} |")


REPORT_HEADER = ("| checkpoint | model | test acc, EMA statistics | test acc, Algorithm 2 statistics | batches |\n"
                 "|---|---|---|---|---|")


def out_path(checkpoint: Path, run_dir: Path | None, suffix: str) -> Path:
    """Where a recalibrated checkpoint goes: in a run directory ``<job dir>-population<suffix>.pt``
    (e.g. ``bn-population.pt``), else beside its source (``default_out``)."""
    if run_dir is None:
        return default_out(checkpoint, suffix)
    return run_dir / f"{checkpoint.parent.name}-population{suffix}.pt"


def summary(results: list[dict]) -> str:
    return "\n".join(["# Algorithm 2: population BN statistics vs the EMA", "",
                      "E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2] over training mini-batches with the final "
                      "weights (Ioffe & Szegedy 2015, Algorithm 2), against PyTorch's running average (momentum 0.1).",
                      "", REPORT_HEADER, *map(report_line, results), ""])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="+", help="bnserve checkpoint(s) of a model with BN (their EMA statistics)")
    p.add_argument("--batches", type=int, default=200, help="training mini-batches to average over (default: 200)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="m, examples per mini-batch (default: the run's training batch size, else 60)")
    p.add_argument("--noise", action=argparse.BooleanOptionalAction, default=True,
                   help="noisy BN: keep the training-time noise during the passes (default: on)")
    p.add_argument("--compare-noise", action="store_true",
                   help="noisy BN: recalibrate twice, noise on and off (a second checkpoint, -no-noise)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mini-batch draw (default: 0)")
    p.add_argument("--out", default=None, help="checkpoint to write, one input only (default: <stem>-population.pt)")
    p.add_argument("--run-dir", default=None,
                   help="write the checkpoints there (<job>-population.pt) with config.json, results.json "
                        "and summary.md: a run the report reads")
    p.add_argument("--data-dir", default=None, help="dataset directory (see docs/reproduction.md, \"Data\")")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def main(args: argparse.Namespace) -> int:
    if args.batches < 1:
        raise ValueError("--batches must be positive")
    checkpoints = [Path(c) for c in args.checkpoint]
    if args.out and (len(checkpoints) > 1 or args.run_dir or args.compare_noise):
        raise ValueError("--out names one checkpoint: give one input, without --run-dir / --compare-noise")
    run_dir = Path(args.run_dir) if args.run_dir else None
    loaded = {c: load_checkpoint(c) for c in checkpoints}  # model, checkpoint dict
    if run_dir is not None:
        config = {"checkpoints": [str(c) for c in checkpoints], "batches": args.batches,
                  "batch_size": args.batch_size, "noise": args.noise, "compare_noise": args.compare_noise,
                  "seed": args.seed, "data_dir": args.data_dir,
                  "dataset": ", ".join(sorted({ck["data"]["dataset"] for _, ck in loaded.values()}))}
        start_run(run_dir, "recalibrate", config, preset=preset_of(checkpoints[0]))
    results = []
    for ckpt, (model, _) in loaded.items():
        # (noise, output suffix) per pass: the noisy BN twice with --compare-noise
        passes = ([(True, ""), (False, "-no-noise")] if args.compare_noise and has_noisy_bn(model)
                  else [(args.noise, "")])
        for noise, suffix in passes:
            out = Path(args.out) if args.out else out_path(ckpt, run_dir, suffix)
            results.append(recalibrate(ckpt, out, batches=args.batches, batch_size=args.batch_size, noise=noise,
                                       seed=args.seed, data_dir=args.data_dir, device=args.device))
    text = summary(results)
    if run_dir is not None:
        write_json(run_dir / "results.json", results)
        (run_dir / "summary.md").write_text(text)
        finish_run(run_dir)
    print(text)
    for r in results:
        print(f"Wrote {r['out']} (bn_statistics.estimate = {POPULATION!r}); `python -m export {r['out']} ...` "
              "folds these statistics.")
    return 0

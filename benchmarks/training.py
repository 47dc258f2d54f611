"""Training speed: steps/s of our loops against the loop most people write first.

Ours: the whole dataset on the device as uint8, batches by ``index_select``, normalisation on
the device, no host sync inside a step (``training.loop.sgd_step``, the step the experiments
run). Baseline, in the same process on the same model: a ``DataLoader`` over a float
``TensorDataset`` with ``shuffle=True`` and ``loss.item()`` every step (pytorch/examples
style). Synthetic uint8 images: speed does not depend on their content.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from training.data import BatchSampler, Normalizer, Split
from training.loop import PlainSGD, prepare_model, sgd_step
from training.models import create_model

from .common import markdown_table

CASES = [
    # (label, model, model kwargs, input (C, H, W), batch size, steps to time on CPU, CPU threads)
    # The MLP runs on one thread: ioffe-fig1 trains its two variants side by side, one core each.
    ("Ioffe MLP 3x100, no BN", "mlp3x100", {"bn": False}, (1, 28, 28), 60, 3000, 1),
    ("Ioffe MLP 3x100 + BN", "mlp3x100", {"bn": True}, (1, 28, 28), 60, 3000, 1),
    ("VGG-11 + BN, width 0.25, 28 px", "vgg11", {"bn": True, "width": 0.25}, (1, 28, 28), 128, 40, None),
    ("VGG-11 + BN, full width, 32 px x3", "vgg11", {"bn": True}, (3, 32, 32), 128, 8, None),
    # Santurkar's VGG-16: the cpu presets' network (one core per run) and the paper preset's.
    ("VGG-16 + BN, width 0.125, 28 px", "vgg16", {"bn": True, "width": 0.125}, (1, 28, 28), 128, 40, 1),
    ("VGG-16 + BN, full width, 32 px x3", "vgg16", {"bn": True}, (3, 32, 32), 128, 4, None),
]


def _synthetic(n: int, shape, device, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g).to(device),
                 torch.randint(0, 10, (n,), generator=g).to(device))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours_steps_per_s(name, kw, shape, batch, steps, device, data: Split) -> float:
    torch.manual_seed(0)
    model = prepare_model(create_model(name, in_channels=shape[0], image_size=shape[1], **kw), device)
    norm = Normalizer((0.5,) * shape[0], (0.25,) * shape[0], device)
    # what the experiments use: PlainSGD for the Ioffe MLP (plain SGD in the paper), momentum
    # SGD for the VGGs (training/classifier.py)
    opt = (PlainSGD(model.parameters(), lr=0.01) if name == "mlp3x100" else
           torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True))
    sampler = BatchSampler(len(data), batch, 0, device)
    amp = device.type == "cuda"
    for _ in range(max(3, steps // 10)):
        sgd_step(model, opt, norm, *data.batch(sampler.next_indices()), amp)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        sgd_step(model, opt, norm, *data.batch(sampler.next_indices()), amp)
    _sync(device)
    return steps / (time.perf_counter() - t0)


def baseline_steps_per_s(name, kw, shape, batch, steps, device, data: Split) -> float:
    torch.manual_seed(0)
    model = create_model(name, in_channels=shape[0], image_size=shape[1], **kw).to(device)
    x = (data.images.cpu().float() / 255 - 0.5) / 0.25  # normalised on the host, once
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, data.labels.cpu()),
                                         batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9 if name != "mlp3x100" else 0.0)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()  # the per-step logging most loops do: a host sync

    for _ in range(max(3, steps // 10)):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def run(quick: bool = False, device: str = "auto") -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    rows, results = [], []
    all_threads = torch.get_num_threads()
    for label, name, kw, shape, batch, cpu_steps, threads in CASES:
        torch.set_num_threads(threads if threads and dev.type == "cpu" else all_threads)
        steps = cpu_steps if dev.type == "cpu" else cpu_steps * 20
        if quick:
            steps = max(4, steps // 10)
        data = _synthetic(max(10 * batch, 6000), shape, dev)
        ours = ours_steps_per_s(name, kw, shape, batch, steps, dev, data)
        base = baseline_steps_per_s(name, kw, shape, batch, steps, dev, data)
        results.append({"case": label, "batch": batch, "ours": ours, "baseline": base,
                        "threads": torch.get_num_threads()})
        rows.append([label, batch, torch.get_num_threads(), ours, base, f"{ours / base:.2f}x"])
        print(f"  {label}: ours {ours:,.1f} steps/s, baseline {base:,.1f} steps/s", flush=True)
    torch.set_num_threads(all_threads)
    table = markdown_table(["model", "batch", "threads", "ours steps/s", "DataLoader baseline steps/s",
                            "ratio"], rows)
    note = (f"device {dev}, {os.cpu_count()} cores; "
            "mixed precision bf16 + channels_last on CUDA only. " + paper_preset_time(results))
    return {"name": "training", "results": results, "table": table, "note": note, "intro": __doc__}


def paper_preset_time(results: list[dict]) -> str:
    """The Santurkar VGG paper preset's wall time at the full-width VGG-16 speed just measured."""
    from training.santurkar import FIG1_PRESETS

    paper = FIG1_PRESETS["paper"]
    vgg = next((r for r in results if r["case"].startswith("VGG-16 + BN, full width")), None)
    if vgg is None or vgg["batch"] != paper.batch_size:
        return ""
    seconds = paper.steps / vgg["ours"]
    runs = len(paper.lrs) * len(paper.variants) * paper.seeds
    return (f"At that full-width VGG-16 speed, the Santurkar paper preset (batch {paper.batch_size}, "
            f"{paper.steps:,} steps) takes {seconds / 60:,.1f} min of training per run, "
            f"{runs * seconds / 3600:,.2f} h for Figure 1's {runs} runs (seeds included) one after another "
            "(evaluations not included).")

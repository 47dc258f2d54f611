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

from training.data import BatchSampler, Normalizer, Split, get_spec
from training.ioffe.stacked import (
    NormalizedSplit,
    StackedMLP,
    StackedSampler,
    seed_model,
    stacked_evaluate,
    stacked_step,
)
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
    # Figs. 2 and 5: the noisy BN and an l_p normalisation in place of BN, same network.
    ("VGG-16 + noisy BN, width 0.125, 28 px", "vgg16", {"noisy_bn": True, "width": 0.125}, (1, 28, 28), 128, 20, 1),
    ("VGG-16 + l2 norm, width 0.125, 28 px", "vgg16", {"lp_norm": "l2", "width": 0.125}, (1, 28, 28), 128, 20, 1),
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


# --- many seeds at once (Ioffe Fig. 1, training/ioffe/stacked.py) --------------------------------

SEEDS = 5
MNIST_NORM = Normalizer(get_spec("mnist").mean, get_spec("mnist").std)  # what ioffe-fig1 normalises with


def _stacked_inputs(n: int) -> NormalizedSplit:
    """``n`` synthetic MNIST-sized images, normalised once as ioffe-fig1's training set is."""
    return NormalizedSplit(_synthetic(n, (1, 28, 28), "cpu"), MNIST_NORM)
SEED_STEPS = 50_000


def ioffe_job_seconds(bn: bool, seeds: int, steps: int, eval_every: int = 500, threads: int = 1) -> float:
    """Wall time of one ioffe-fig1 job: ``seeds`` stacked seeds of one variant, ``steps`` steps
    with the full-test-set evaluation every ``eval_every`` steps, as the experiment runs them
    (synthetic MNIST-sized data: 60,000 train, 10,000 test)."""
    torch.set_num_threads(threads)
    train, test = _synthetic(60_000, (1, 28, 28), "cpu"), _synthetic(10_000, (1, 28, 28), "cpu", seed=1)
    norm = MNIST_NORM
    ids = list(range(seeds))
    net = StackedMLP([seed_model(s, bn) for s in ids])
    opt, sampler = PlainSGD(net.parameters(), lr=0.1), StackedSampler(len(train), 60, ids, "cpu")
    inputs = NormalizedSplit(train, norm)  # once per job, like the data loading: not timed
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, labels = inputs.batch(sampler.next_indices())
        stacked_step(net, opt, x, labels)
        if step % eval_every == 0 or step == steps:
            stacked_evaluate(net, test, norm).tolist()
    return time.perf_counter() - t0


def step_cost_ratio(bn: bool, seeds: int = SEEDS, blocks: int = 20, block_steps: int = 50) -> float:
    """Time per training step of ``seeds`` stacked seeds over one seed, in one process on one
    thread, in alternating blocks: a change of machine load hits both alike."""
    torch.set_num_threads(1)
    inputs = _stacked_inputs(6_000)
    runs = []
    for n in (1, seeds):
        net = StackedMLP([seed_model(s, bn) for s in range(n)])
        runs.append((net, PlainSGD(net.parameters(), lr=0.1), StackedSampler(len(inputs), 60, list(range(n)), "cpu")))
    spent = [0.0, 0.0]
    for block in range(blocks + 1):
        for i, (net, opt, sampler) in enumerate(runs):
            t0 = time.perf_counter()
            for _ in range(block_steps):
                stacked_step(net, opt, *inputs.batch(sampler.next_indices()))
            if block:  # the first block warms up
                spent[i] += time.perf_counter() - t0
    return spent[1] / spent[0]


def floor_ratio(step_1: float, matmul_1: float, matmul_s: float) -> float:
    """S seeds' step time over one seed's if all that grew with S were the matmuls:
    ``(step_1 - matmul_1 + matmul_s) / step_1``."""
    return (step_1 - matmul_1 + matmul_s) / step_1


def matmul_floor(bn: bool, seeds: int = SEEDS, blocks: int = 20, block_steps: int = 50) -> dict:
    """The lowest ``seeds``-over-1 step ratio the matmuls allow, measured on one thread.

    Times, in alternating blocks, a whole one-seed step and the step's matrix products alone (per
    layer: forward, weight gradient, input gradient but the first layer's, on random tensors of
    the step's shapes) for 1 and for ``seeds`` seeds. If everything but the matmuls cost the same
    for ``seeds`` seeds as for one, a step would take ``step_1 - matmul_1 + matmul_S``: the
    ratio over ``step_1`` is the floor no cut of overhead can go below."""
    torch.set_num_threads(1)
    inputs = _stacked_inputs(6_000)
    net = StackedMLP([seed_model(0, bn)])
    opt, sampler = PlainSGD(net.parameters(), lr=0.1), StackedSampler(len(inputs), 60, [0], "cpu")
    sizes = [w.shape[1:] for w in net.weights]  # (out, in) per layer
    g = torch.Generator().manual_seed(0)

    def matmuls(n: int):
        xs = [torch.randn(n, 60, i, generator=g) for _, i in sizes]
        ws = [torch.randn(n, o, i, generator=g) for o, i in sizes]
        gs = [torch.randn(n, 60, o, generator=g) for o, _ in sizes]
        bs = [None if b is None else torch.randn(n, 1, o, generator=g) for b, (o, _) in zip(net.biases, sizes, strict=True)]

        def run():
            for j, (x, w, gr, b) in enumerate(zip(xs, ws, gs, bs, strict=True)):
                torch.bmm(x, w.transpose(1, 2)) if b is None else torch.baddbmm(b, x, w.transpose(1, 2))
                torch.bmm(gr.transpose(1, 2), x)
                if j:
                    torch.bmm(gr, w)
        return run

    def step():
        stacked_step(net, opt, *inputs.batch(sampler.next_indices()))

    work = {"step_1": step, "matmul_1": matmuls(1), f"matmul_{seeds}": matmuls(seeds)}
    spent = dict.fromkeys(work, 0.0)
    for block in range(blocks + 1):
        for name, fn in work.items():
            t0 = time.perf_counter()
            for _ in range(block_steps):
                fn()
            if block:  # the first block warms up
                spent[name] += time.perf_counter() - t0
    ms = {k: 1e3 * v / (blocks * block_steps) for k, v in spent.items()}
    floor = floor_ratio(ms["step_1"], ms["matmul_1"], ms[f"matmul_{seeds}"])
    return {**{f"{k}_ms": round(v, 3) for k, v in ms.items()}, "floor_ratio": round(floor, 2)}


def seeds_wall_time(seeds: int, steps: int) -> float:
    """Both variants side by side, one process each on one thread (as ioffe-fig1 runs on a
    2-core CPU): the training wall time until both finish (the slower job's own clock, so
    process start-up and imports, the same for any number of seeds, are not counted)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(ioffe_job_seconds, bn, seeds, steps) for bn in (False, True)]
        return max(f.result() for f in futures)


def seeds_benchmark(quick: bool = False, seeds: int = SEEDS, steps: int | None = None) -> dict:
    """{seeds} seeds x 2 variants against 1 seed x 2 variants, measured back to back twice
    (1, N, 1, N) so that a change of machine load shows as a spread; target ratio <= 1.5."""
    steps = steps or (1_000 if quick else SEED_STEPS)
    one, many = [], []
    for _ in range(2):
        one.append(seeds_wall_time(1, steps))
        many.append(seeds_wall_time(seeds, steps))
        print(f"  ioffe-fig1 {steps:,} steps x 2 variants: 1 seed {one[-1]:.1f} s, {seeds} seeds "
              f"{many[-1]:.1f} s ({many[-1] / one[-1]:.2f}x)", flush=True)
    step_ratios = {v: step_cost_ratio(v == "bn", seeds) for v in ("standard", "bn")}
    print("  time per step, {} seeds over 1, same process, alternating blocks: {}".format(
        seeds, ", ".join(f"{v} {r:.2f}x" for v, r in step_ratios.items())), flush=True)
    floors = {v: matmul_floor(v == "bn", seeds) for v in ("standard", "bn")}
    print("  matmuls only (ms per step) and the step ratio they allow: {}".format(
        "; ".join(f"{v} {f}" for v, f in floors.items())), flush=True)
    ratios = [m / o for m, o in zip(many, one, strict=True)]
    # total over total: a load change during one pair weighs in as much as it lasted
    return {"seeds": seeds, "steps": steps, "one_seed_s": one, "many_seeds_s": many,
            "ratio": sum(many) / sum(one), "ratios": ratios, "step_ratios": step_ratios, "floors": floors,
            "load": os.getloadavg()}


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
    seeds = seeds_benchmark(quick) if dev.type == "cpu" else None
    table = markdown_table(["model", "batch", "threads", "ours steps/s", "DataLoader baseline steps/s",
                            "ratio"], rows)
    note = (f"device {dev}, {os.cpu_count()} cores; "
            "mixed precision bf16 + channels_last on CUDA only. " + paper_preset_time(results))
    if seeds:
        floors = ", ".join(f"{v} {f['floor_ratio']:.2f}x" for v, f in seeds["floors"].items())
        note += (f" Seeds trained together (ioffe-fig1, stacked weights): {seeds['seeds']} seeds x 2 variants x "
                 f"{seeds['steps']:,} steps took {', '.join(f'{t:.1f}' for t in seeds['many_seeds_s'])} s against "
                 f"{', '.join(f'{t:.1f}' for t in seeds['one_seed_s'])} s for 1 seed x 2 variants, measured "
                 f"alternately: ratio {seeds['ratio']:.2f}x (total over total; pairs "
                 f"{', '.join(f'{r:.2f}x' for r in seeds['ratios'])}; target <= 1.5x); time per step of "
                 f"{seeds['seeds']} seeds over 1 in one process, alternating blocks: "
                 f"{', '.join(f'{v} {r:.2f}x' for v, r in seeds['step_ratios'].items())}; the step's matmuls "
                 f"alone allow no less than {floors} "
                 "(one-seed step minus its matmuls plus the seeds' matmuls, over the one-seed step); "
                 f"load average {seeds['load'][0]:.1f} when done.")
    return {"name": "training", "results": results, "table": table, "note": note, "intro": __doc__,
            "seeds": seeds}


def paper_preset_time(results: list[dict]) -> str:
    """The Santurkar VGG paper preset's wall time at the full-width VGG-16 speed just measured."""
    from training.santurkar.config import FIG1_PRESETS

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

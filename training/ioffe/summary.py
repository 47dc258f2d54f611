"""``summary.md`` of a Figure 1 run, from its metrics files (plus the timings of the run that
wrote them, when there is one): mean +- std over seeds at 500, 2k, 5k, 10k and the last step,
"BN ahead in k of N seeds", and the published numbers for the same network beside ours."""

from __future__ import annotations

from pathlib import Path

from ..data import get_spec
from ..seeds import BAND, ahead, at_step, by_seed, fmt_table_row
from .config import BINARIZE_THRESHOLD
from .figures import load_jobs

SUMMARY_STEPS = (500, 2_000, 5_000, 10_000)

# Test accuracy of the same network (MNIST, 3x100 sigmoid, batch 60, plain SGD, 50,000 steps
# unless noted) in the Udacity deep-learning course's batch-norm lesson notebook, one run each,
# as quoted in issue #11. {lr: {variant: {step: acc}}}
PUBLISHED = {
    1.0: {"standard": {2_000: 0.9227, 50_000: 0.9752}, "bn": {2_000: 0.9463, 50_000: 0.9812}},
    0.01: {"standard": {50_000: 0.8271}, "bn": {50_000: 0.9732}},
}
PUBLISHED_SOURCE = "Udacity deep-learning course, batch-norm lesson notebook, one run"
# Fashion-MNIST has no Figure 1 to compare with; its benchmark table (zalandoresearch/fashion-mnist
# README, "Benchmark") gives an MLP of similar size for scale.
FASHION_MLP = "Fashion-MNIST benchmark table (zalandoresearch/fashion-mnist): MLPClassifier 256-128-100, 0.883"


def _steps(cfg) -> list[int]:
    return [s for s in SUMMARY_STEPS if s < cfg.steps] + [cfg.steps]


def write_summary(run_dir: str | Path, results: list[dict] | None = None, wall: float | None = None) -> Path:
    run_dir = Path(run_dir)
    _, cfg, jobs = load_jobs(run_dir)
    spec = get_spec(cfg.dataset)
    cols = _steps(cfg)
    acc = {k: by_seed(rows, "test_accuracy") for k, rows in jobs.items()}
    n_seeds = max(len(s) for s in acc.values())
    seeds = sorted(next(iter(acc.values())))
    lines = [
        "# Ioffe & Szegedy 2015, Figure 1: reproduction",
        "",
        f"Dataset: **{spec.name}** ({spec.citation})"
        + ("" if spec.name == "mnist" else " - the paper used MNIST; this run did not."),
        "Input: " + (f"**binary** as in the paper's Sec. 4.1 (pixel >= {BINARIZE_THRESHOLD} of 255 -> 1, else 0)"
                     if cfg.binarize else "greyscale (the paper's is binary: `--binarize`)") + ".",
        f"Settings: {cfg.steps:,} steps, batch {cfg.batch_size} (the paper's), plain SGD at the lr below (ours: "
        "Sec. 4.1 states no optimiser and no learning rate), 3x100 sigmoid MLP, "
        f"weights N(0, 1/fan_in); seeds {', '.join(map(str, seeds))} (each seed: its own init and "
        f"batch order, the same for both variants); test accuracy on the full test set.",
        "",
    ]
    for lr in cfg.lr_list:
        pair = {v: acc[(v, lr)] for v in cfg.variants if (v, lr) in acc}
        if not pair:
            continue
        lines += [f"## lr {lr:g}: test accuracy, " + ("mean +- std over "
                                                      f"{n_seeds} seeds (sample std)" if n_seeds > 1 else "one seed"),
                  "",
                  "| variant | " + " | ".join(f"@ {c:,}" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        lines += [fmt_table_row(v, s, cols) for v, s in pair.items()]
        if len(pair) == 2:
            bn, std = pair["bn"], pair["standard"]
            lines.append("| BN ahead in | " + " | ".join(ahead(bn, std, c).fmt() for c in cols) + " |")
            lines.append("| BN ahead in the mean | " + " | ".join(
                "yes" if at_step(bn, c).mean > at_step(std, c).mean else "no" for c in cols) + " |")
        lines += ["", f"Per seed ({'standard / bn' if len(pair) == 2 else next(iter(pair))}):", ""]
        for s in sorted(next(iter(pair.values()))):
            cells = [" / ".join(f"{pair[v][s][c]:.4f}" for v in pair) for c in cols]
            lines.append(f"- seed {s}: " + ", ".join(f"{c:,}: {x}" for c, x in zip(cols, cells, strict=True)))
        lines.append("")
        published = PUBLISHED.get(lr)
        if published and spec.name == "mnist":
            lines += [f"Published for lr {lr:g} ({PUBLISHED_SOURCE}) beside ours (mean over seeds):", "",
                      "| variant | step | published | ours |", "|---|---|---|---|"]
            for v, by_step in published.items():
                for step, p in by_step.items():
                    ours = (f"{at_step(pair[v], step).fmt()}" if v in pair and all(step in s for s in pair[v].values())
                            else "not run")
                    lines.append(f"| {v} | {step:,} | {p:.4f} | {ours} |")
            lines.append("")
    if results:
        lines += ["## Time", "", "| job | seeds | train steps/s (all seeds together) | train s | device, threads |",
                  "|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['job']} | {len(r['seeds'])} | {r['steps_per_s']:.0f} | {r['train_seconds']:.1f} | "
                         f"{r['device']}, {r['threads']} |")
        lines.append("")
    if wall is not None:
        lines += [f"Wall time for the whole run (all jobs, data loading, figure): {wall:.1f} s.", ""]
    if spec.name == "fashion-mnist":
        lines += [f"For scale: {FASHION_MLP}.", ""]
    if n_seeds > 1:
        lines += [f"figure.png: mean over seeds with the {BAND} band; panels (b), (c) show every seed, "
                  "the first bold.", ""]
    lines += ["The paper prints no final numbers; its claim is that BN reaches higher accuracy "
              "sooner and keeps the sigmoid input distributions stable (panels b, c of figure.png).", ""]
    out = run_dir / "summary.md"
    out.write_text("\n".join(lines))
    return out

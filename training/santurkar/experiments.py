"""Orchestration: the jobs of each figure (variant x lr x seed VGG runs, DLN runs), run side by
side on a multi-core CPU, then the figure and ``summary.md`` (claims from ``claims.py``)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from ..data import get_spec, load_dataset
from ..models import LP_NORMS
from ..pool import run_jobs
from ..records import RunRecord
from ..runs import finish_run, pick_device, start_run
from ..seeds import BAND, at_step, seed_list
from ..verdicts import RULE
from . import claims as C
from .config import INIT_NAMES, VGGRunsConfig
from .dln import train_dln
from .dln_stacked import train_dln_stacked
from .figures import PLOTTERS
from .jobs import load_jobs
from .vgg import train_vgg


def run_figure(cfg: VGGRunsConfig, preset: str | None, experiment: str, dln: dict | None = None) -> Path:
    """Train every job of ``experiment``, then draw its figure and write its summary.
    ``dln``: keyword arguments of ``train_dln`` when the figure has DLN runs."""
    device = pick_device(cfg.device)
    load_dataset(cfg.dataset, cfg.data_dir)  # fail (or download) once, before any worker starts
    run_dir = start_run(cfg.out, experiment, cfg, device, preset)
    t0 = time.perf_counter()
    seeds = seed_list(cfg.seed, cfg.seeds)
    # Longest jobs (the VGGs) first so the pool's last worker is not left with the longest one.
    jobs: list[tuple] = [(train_vgg, cfg, v, lr, s, str(run_dir), experiment)
                         for s in seeds for lr in cfg.lrs for v in cfg.variants]
    if dln is not None:
        # The DLN runs have every seed too: each claim is judged against the spread over seeds.
        # Without ICS or landscape probes (Fig. 5) the l_p DLNs' seeds train together, stacked
        # (one job per variant, about the CPU time of one seed: their many small ops cost per
        # op, not per seed); Standard and BN gain nothing from it on a CPU (a batched matmul
        # costs more than three plain ones), and the probes measure one model at a time.
        probes = bool(dln.get("ics_layers") or dln.get("landscape_points"))
        stacked = [] if probes else [v for v in cfg.dln_variants if v in LP_NORMS]
        jobs += [(train_dln_stacked, cfg, v, lr, seeds, str(run_dir)) for lr in cfg.dln_lrs for v in stacked]
        jobs += [(train_dln, cfg, v, lr, s, str(run_dir), dln.get("ics_layers", ()), dln.get("landscape_points", 0))
                 for s in seeds for lr in cfg.dln_lrs for v in cfg.dln_variants if v not in stacked]
    results = [r for res in run_jobs(jobs, cfg.parallel, device.type) for r in (res if isinstance(res, list) else [res])]
    wall = time.perf_counter() - t0
    PLOTTERS[experiment](run_dir)
    write_summary(run_dir, experiment, cfg, preset, results, wall)
    finish_run(run_dir)
    return run_dir


def run_fig1(cfg, preset=None) -> Path:
    return run_figure(cfg, preset, "santurkar-fig1")


def run_fig2(cfg, preset=None) -> Path:
    return run_figure(cfg, preset, "santurkar-fig2")


def run_fig3(cfg, preset=None) -> Path:
    return run_figure(cfg, preset, "santurkar-fig3", dln={"ics_layers": tuple(cfg.dln_ics_layers)})


def run_fig4(cfg, preset=None) -> Path:
    return run_figure(cfg, preset, "santurkar-fig4", dln={"landscape_points": cfg.landscape_points})


def run_fig5(cfg, preset=None) -> Path:
    return run_figure(cfg, preset, "santurkar-fig5", dln={})


# --- summaries ----------------------------------------------------------------------------------

def write_summary(run_dir: Path, experiment: str, cfg, preset: str | None, results: list[dict],
                  wall: float) -> None:
    spec = get_spec(cfg.dataset)
    fig = experiment.rsplit("fig", 1)[1]
    vgg_res = [r for r in results if "evals" in r]
    dln_res = [r for r in results if "evals" not in r]
    mid, end = cfg.steps // 2, cfg.steps
    seeds = seed_list(cfg.seed, cfg.seeds)
    vgg, dln = load_jobs(run_dir, asdict(cfg))
    lines = [
        f"# Santurkar et al. 2018, Figure {fig}{' and 6' if fig == '5' else ''}: reproduction",
        "",
        f"Preset: **{preset or 'custom'}**. Dataset: **{spec.name}** ({spec.citation})"
        + ("" if spec.name == "cifar10" else " - the paper used CIFAR-10; this run did not."),
        f"VGG: {cfg.model}, width {cfg.width} ({'standard' if cfg.width == 1 else 'reduced'} channel counts), "
        f"{INIT_NAMES[cfg.init]} init{'' if cfg.init == 'glorot' else ' (the paper: Glorot; see the README)'}, plain SGD (no momentum, no weight decay), batch {cfg.batch_size}, "
        f"{cfg.steps:,} steps, no augmentation; seeds {', '.join(map(str, seeds))} "
        f"(curves: mean over seeds, band {BAND}).",
    ]
    if vgg_res:
        lines += [
            f"Training accuracy: eval mode on a fixed {vgg_res[0]['n_train_eval']:,}-image training subset; "
            f"mini-batch accuracy: train mode, on the batches the optimiser saw; test accuracy: "
            f"the first {min(cfg.eval_test_size, vgg_res[0]['n_test']):,} test images during training, "
            f"the full test split ({vgg_res[0]['n_test']:,} images) at the last step.",
            "",
            f"| run (mean +- std over {len(seeds)} seed(s)) | train acc @ {mid:,} | train acc @ {end:,} | "
            f"mini-batch acc @ {end:,} | test acc @ {end:,} | diverged | steps/s per run | time per run (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (v, lr), rows in vgg.items():
            res = [r for r in vgg_res if r["variant"] == v and r["lr"] == lr]
            cells = []
            for key, step in (("train_eval_accuracy", mid), ("train_eval_accuracy", end),
                              ("train_accuracy", end), ("test_accuracy", end)):
                try:
                    cells.append(at_step(C.eval_series(rows, key), step).fmt())
                except (KeyError, ValueError):
                    cells.append("n/a")
            div = sum(r["diverged_at"] is not None for r in res)
            sps = sum(r["steps_per_s"] for r in res) / max(1, len(res))
            secs = sum(r["train_seconds"] + r["measure_seconds"] for r in res) / max(1, len(res))
            lines.append(f"| {v}, lr {lr:g} | " + " | ".join(cells) + f" | {div} of {len(res)} | {sps:.1f} | {secs:.0f} |")
        lines.append("")
    if dln_res:
        lines += [f"DLN: 25 layers 10x10, {cfg.dln_samples:,} Gaussian samples (full batch), "
                  f"{cfg.dln_steps:,} steps of gradient descent, loss = squared error "
                  f"{'summed over samples' if cfg.dln_loss == 'sum' else 'averaged over samples'}.", "",
                  "| DLN run | final loss | diverged at | steps/s | time (s) |", "|---|---|---|---|---|"]
        for r in dln_res:
            lines.append(f"| {r['job']} | {r['final_loss']:.4g} | {r['diverged_at'] if r['diverged_at'] is not None else '-'} | "
                         f"{r['steps_per_s']:.0f} | {r['seconds']:.0f} |")
        lines.append("")
    lines += [f"Wall time for the whole figure (all runs side by side, data, figure): **{wall:.0f} s** "
              f"({os.cpu_count()} cores; load average at the end: {_loadavg()}).", ""]
    claims = C.claims_for(experiment, asdict(cfg), vgg, dln)
    if experiment == "santurkar-fig3":
        lines += _ics_table(vgg, "VGG") + _ics_table(dln, "DLN")
    elif experiment == "santurkar-fig4":
        lines += _landscape_table(vgg, "VGG") + _landscape_table(dln, "DLN")
    elif experiment == "santurkar-fig5":
        lines += ["l_p normalisation (Sec. 3.3): centre each unit over the batch (and positions), and divide "
                  "by the batch average of each sample's l_p norm of the raw activations, taken before the "
                  "mean is subtracted (the paper's \"before shifting the mean\"). Ours where the paper is "
                  "silent: the norm runs over all the layer's units as a power mean, (mean_j |x_j|^p)^(1/p) "
                  "(max for p = inf); one scale per layer, learnable gamma and beta per unit "
                  "(training.models.LpNorm).", ""]
    lines += [CLAIMS_HEADING, "", RULE, ""] + [C.claim_line(c) for c in claims]
    lines += ["", f"figure.png redraws and these claims recompute from the metrics alone: "
              f"`python -m training plot {run_dir}`.", ""]
    (Path(run_dir) / "summary.md").write_text("\n".join(lines))


CLAIMS_HEADING = "## The paper's claims, checked"


def refresh_claims(run_dir: str | Path) -> Path:
    """Recompute the claims section of a run's ``summary.md`` from its metrics (the claims are
    pure functions of them): ``python -m training plot RUN_DIR`` calls this."""
    run_dir = Path(run_dir)
    record = RunRecord.read(run_dir)
    vgg, dln = load_jobs(run_dir, record.config)
    claims = C.claims_for(record.experiment, record.config, vgg, dln)
    path = run_dir / "summary.md"
    head = path.read_text().split(CLAIMS_HEADING, 1)[0] if path.exists() else ""
    path.write_text(head + "\n".join([CLAIMS_HEADING, "", RULE, ""] + [C.claim_line(c) for c in claims] + [
        "", f"figure.png redraws and these claims recompute from the metrics alone: "
        f"`python -m training plot {run_dir}`.", ""]))
    return path


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _ics_table(jobs: dict, net: str) -> list[str]:
    if not jobs:
        return []
    lines = [f"| {net} run | ICS median l2 | median l2 / ‖G‖ | median cosine | min cosine |", "|---|---|---|---|---|"]
    for (v, lr), rows in jobs.items():
        st = C.ics_stats(rows)
        lines.append(f"| {v}, lr {lr:g} | {st['ics_l2']:.4g} | {st['ics_rel']:.4g} | {st['ics_cosine']:.4f} | "
                     f"{st['min_cosine']:.4f} |")
    return lines + ["", "Medians over every measurement of the measured layers.", ""]


def _landscape_table(jobs: dict, net: str) -> list[str]:
    if not jobs:
        return []
    lines = [f"| {net} run | loss range | max ‖g - g'‖ | effective beta |", "|---|---|---|---|"]
    for (v, lr), rows in jobs.items():
        st = C.landscape_stats(rows)
        lines.append(f"| {v}, lr {lr:g} | {st['loss_range']:.4g} | {st['grad_diff_max']:.4g} | {st['beta']:.4g} |")
    return lines + ["", "Medians over the probes taken during training (each probe: the step's own "
                    "mini-batch, train mode, running statistics frozen, the step lengths of Appendix A.2.2).", ""]

"""A figure's jobs on disk: one directory per (variant, lr, seed) run, and reading them back."""

from __future__ import annotations

from pathlib import Path

from ..records import read_metrics
from ..seeds import seed_list


def job_name(variant: str, lr: float, seed: int) -> str:
    return f"{variant}_lr{lr:g}_seed{seed}"


def dln_job_name(variant: str, lr: float, seed: int) -> str:
    return f"dln_{variant}_lr{lr:g}_seed{seed}"


def load_jobs(run_dir: Path, cfg: dict) -> tuple[dict, dict]:
    """``({(variant, lr): rows}, {(variant, lr): rows})`` of the VGG and DLN jobs of a run (its
    record's ``config``), rows of every seed together (each row carries its seed)."""
    run_dir = Path(run_dir)
    seeds = seed_list(cfg.get("seed", 0), cfg.get("seeds", 1))
    vgg, dln = {}, {}
    for lr in cfg.get("lrs", []):
        for v in cfg.get("variants", []):
            rows = [r for s in seeds for r in _rows(run_dir / job_name(v, lr, s))]
            if rows:
                vgg[(v, lr)] = rows
    for lr in cfg.get("dln_lrs", []):
        for v in cfg.get("dln_variants", []):
            rows = [r for s in seeds for r in _rows(run_dir / dln_job_name(v, lr, s))]
            if rows:
                dln[(v, lr)] = rows
    return vgg, dln


def _rows(job_dir: Path) -> list[dict]:
    path = job_dir / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []

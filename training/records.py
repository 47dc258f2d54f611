"""What a run directory holds, written and read here only (no torch: the report and the
figures read runs without the training code).

- ``config.json``: the run's ``RunRecord`` (experiment, preset, resolved config, seeds, git
  revision, environment, ``partial`` until the run finished);
- ``<job>/metrics.jsonl``: one JSON object a line, each with its ``kind``, ``seed`` and ``step``;
- checkpoints, ``figure.png``, ``summary.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

RECORD = "config.json"


def to_jsonable(obj):
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__ == "torch":  # torch.device, torch.dtype: without importing torch
        return str(obj)
    return obj


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


def seed_range(first: int, n: int) -> list[int]:
    """Seeds ``first .. first+n-1`` (``training.seeds.seed_list``'s rule)."""
    return list(range(first, first + n))


@dataclass(frozen=True)
class RunRecord:
    """A run directory's ``config.json``."""

    experiment: str
    config: dict  # the resolved config, as JSON
    seeds: list[int]  # every seed the run trains (always recorded)
    preset: str | None = None
    git_revision: str = "unknown"
    version: str | None = None
    command: list[str] = field(default_factory=list)
    started_at: str = "unknown"
    environment: dict = field(default_factory=dict)
    partial: bool = False  # True from the start until the run has finished every job

    @classmethod
    def for_config(cls, experiment: str, config, **kw) -> RunRecord:
        """The record of a run of ``config`` (a dataclass or dict); its seeds from ``seed`` and
        ``seeds`` (a count) when it has them."""
        cfg = to_jsonable(config)
        first = cfg.get("seed")
        n = cfg.get("seeds", 1)
        seeds = [] if first is None else seed_range(first, n if isinstance(n, int) else 1)
        return cls(experiment=experiment, config=cfg, seeds=seeds, **kw)

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RECORD
        write_json(path, asdict(self))
        return path

    def finished(self, run_dir: str | Path) -> RunRecord:
        """Mark the run complete on disk (``partial`` false) and return the new record."""
        done = replace(self, partial=False)
        done.write(run_dir)
        return done

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        """Raises OSError when absent, ValueError when not a record."""
        raw = json.loads((Path(run_dir) / RECORD).read_text())
        if not isinstance(raw, dict) or not isinstance(raw.get("experiment"), str) or not raw["experiment"]:
            raise ValueError(f"{Path(run_dir) / RECORD}: no experiment named")
        cfg = raw.get("config") or {}
        seeds = raw.get("seeds")
        if not isinstance(seeds, list):  # records written before seeds were always listed
            first = raw.get("seed", cfg.get("seed"))
            n = cfg.get("seeds", 1)
            seeds = [] if first is None else seed_range(first, n if isinstance(n, int) else 1)
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in raw.items() if k in known}, "config": cfg, "seeds": list(seeds)})

    @classmethod
    def find(cls, runs_dir: str | Path) -> list[tuple[Path, RunRecord]]:
        """Every run under ``runs_dir`` (itself included), sorted by path; unreadable records
        are skipped."""
        out = []
        for path in sorted(Path(runs_dir).rglob(RECORD)):
            try:
                out.append((path.parent, cls.read(path.parent)))
            except (OSError, ValueError, TypeError):
                continue
        return out


def preset_of(checkpoint: Path) -> str | None:
    """The preset of the run a checkpoint came from (its run directory's record, in the
    checkpoint's directory or the one above it)."""
    for d in (checkpoint.parent, checkpoint.parent.parent):
        try:
            return RunRecord.read(d).preset
        except (OSError, ValueError, TypeError):
            continue
    return None


class MetricsWriter:
    """Append-only JSONL, flushed per row, so a killed run keeps what it measured."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")

    def write(self, row: dict) -> None:
        if "kind" not in row:
            raise ValueError(f"metrics row without a kind: {sorted(row)}")
        self._f.write(json.dumps(to_jsonable(row)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

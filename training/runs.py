"""Run records: every run directory holds its resolved config, seed, git revision and
environment (``config.json``), metrics as JSONL, checkpoints and figures."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_revision(root: Path = REPO_ROOT) -> str:
    """``<sha>`` or ``<sha>-dirty``; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


CODE_PATHS = ("training", "export", "serving", "pyproject.toml", "requirements")


def code_revision(root: Path = REPO_ROOT, paths: tuple[str, ...] = CODE_PATHS, exclude: tuple[str, ...] = ()) -> str:
    """The revision of the code a run executes: a hash of the committed files under ``paths``
    (minus ``exclude``), not of the whole commit, so a docs-only commit (or a change to another
    experiment's package) keeps a run current; ``-dirty`` when any of them has uncommitted
    changes; ``unknown`` outside a git checkout."""
    import hashlib
    def kept(path: str) -> bool:
        return not any(path == e or path.startswith(e.rstrip("/") + "/") for e in exclude)
    try:
        # "<mode> <type> <sha>\t<path>" per committed file (ls-tree takes no exclude pathspecs)
        tree = subprocess.run(["git", "ls-tree", "-r", "HEAD", "--", *paths], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.splitlines()
        tree = [line for line in tree if kept(line.split("\t", 1)[-1])]
        changed = subprocess.run(["git", "diff", "HEAD", "--name-only", "--", *paths], cwd=root,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.split()
        dirty = any(kept(p) for p in changed)
        return hashlib.sha256("\n".join(tree).encode()).hexdigest()[:16] + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def project_version() -> str:
    try:
        from importlib.metadata import version
        return version("bnserve")
    except Exception:  # not installed as a package: read pyproject
        import tomllib
        with open(REPO_ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]


def environment(device: torch.device | str | None = None) -> dict:
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if device is not None:
        env["device"] = str(device)
        if torch.device(device).type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use --device cpu or install a CUDA build")
    return dev


def to_jsonable(obj):
    if is_dataclass(obj):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    return obj


def start_run(out: str | Path, experiment: str, config, device=None, preset: str | None = None) -> Path:
    """Create the run directory and write ``config.json`` before any training starts."""
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "experiment": experiment,
        "preset": preset,
        "config": to_jsonable(config),
        "seed": getattr(config, "seed", None),
        "git_revision": git_revision(),
        "version": project_version(),
        "command": [Path(sys.executable).name, "-m", "training", *sys.argv[1:]],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(device),
    }
    write_json(run_dir / "config.json", record)
    return run_dir


def run_preset(checkpoint: Path) -> str | None:
    """The preset of the run a checkpoint came from (its run directory's ``config.json``, in the
    checkpoint's directory or the one above it)."""
    for d in (checkpoint.parent, checkpoint.parent.parent):
        try:
            return json.loads((d / "config.json").read_text()).get("preset")
        except (OSError, ValueError):
            continue
    return None


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


class MetricsWriter:
    """Append-only JSONL, flushed per row, so a killed run keeps what it measured."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")

    def write(self, row: dict) -> None:
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

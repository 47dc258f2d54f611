"""Where and how a run executes: the device, the environment and code revision it records
(``training.records.RunRecord`` is what it writes), and starting / finishing a run directory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .records import RunRecord

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


CODE_PATHS = ("training", "export", "serving", "studies", "pyproject.toml", "requirements")


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


def start_run(out: str | Path, experiment: str, config, device=None, preset: str | None = None,
              module: str = "training") -> Path:
    """Create the run directory and write its record (``config.json``, ``partial`` until
    ``finish_run``) before any training starts."""
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    RunRecord.for_config(
        experiment, config, preset=preset, git_revision=git_revision(), version=project_version(),
        command=[Path(sys.executable).name, "-m", module, *sys.argv[1:]],
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), environment=environment(device),
        partial=True).write(run_dir)
    return run_dir


def finish_run(run_dir: str | Path) -> None:
    """The run finished every job: its record is no longer partial."""
    RunRecord.read(run_dir).finished(run_dir)



"""``python -m training reproduce --preset cpu|paper [--seeds N]`` (``make reproduce``): run every
experiment of both papers in one preset, then write the report (training/report.py).

Each experiment has its jobs in the registry (``training.experiments``): a ``python -m training
...`` (or ``python -m studies ...``) command run as a child process, its
output in ``<runs>/<job>/log.txt``. When a job succeeds, ``<runs>/<job>/reproduce.json`` records
its command, the revision of the code it runs (``job_revision``: the committed files of the shared
code and of its own experiment package, so a docs-only commit or a change to the other paper's
package keeps it current) and the jobs it read from; a later ``reproduce`` skips a job whose
record matches (same command, same revision, inputs unchanged), so deleting one run directory
redoes that run and the runs that read it, nothing else. One overall progress line is printed
(rewritten in place on a terminal, one line per event otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .experiments import STUDIES, Job, reproduce_jobs
from .records import write_json
from .report import write_report
from .runs import REPO_ROOT, code_revision

RECORD = "reproduce.json"


def plan(preset: str, seeds: int | None) -> list[Job]:
    """Every experiment of both papers (the registry's jobs), in the order they run."""
    return reproduce_jobs(preset, seeds)


# The code every job runs (data, models, loop, export, serving); each experiment package counts
# only for the jobs that run it, and the report / orchestration code for none (a report change
# does not redo a run).
EXPERIMENT_PACKAGES = ("training/ioffe", "training/santurkar", *STUDIES)
NOT_RUN_CODE = ("training/report.py", "training/report_types.py", "training/inference_report.py",
                "training/reproduce.py", "training/ioffe/report.py", "training/santurkar/report.py")


def job_revision(job: Job, root: Path = REPO_ROOT) -> str:
    """``code_revision`` of the code ``job`` runs: the shared code plus its own packages."""
    excluded = tuple(p for p in EXPERIMENT_PACKAGES if p not in job.code) + NOT_RUN_CODE
    return code_revision(root, exclude=excluded)


def record_for(job: Job, runs: Path, revision: str, inputs: dict[str, str]) -> dict:
    return {"command": job.command(runs), "code_revision": revision, "inputs": inputs}


def current_inputs(job: Job, runs: Path) -> dict[str, str]:
    """The run id of each job this one reads, as they stand now."""
    return {dep: (read_record(runs, dep) or {}).get("run_id", "") for dep in job.after}


def read_record(runs: Path, name: str) -> dict | None:
    try:
        return json.loads((runs / name / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_current(job: Job, runs: Path, revision: str) -> bool:
    """The job's outputs exist for this command, this code revision and its inputs' current runs."""
    rec = read_record(runs, job.name)  # written only when the job succeeded
    if rec is None:
        return False
    expected = record_for(job, runs, revision, current_inputs(job, runs))
    return all(rec.get(k) == v for k, v in expected.items())


class Progress:
    """One overall progress line."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.t0 = total, stream, time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_tick = -math.inf  # the first "running" line is written

    def show(self, done: int, text: str, final: bool = False, tick: bool = False) -> None:
        """``tick``: a "still running" update; off a terminal (a log file) only one a minute."""
        elapsed = time.monotonic() - self.t0
        line = f"reproduce [{done}/{self.total}] {_clock(elapsed)} {text}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        elif not tick or elapsed - self.last_tick >= 60:
            self.stream.write(line + "\n")
            if tick:
                self.last_tick = elapsed
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def run_jobs(jobs: list[Job], runs: Path, python: str = sys.executable, revision: str | None = None,
             progress: Progress | None = None, poll_s: float = 1.0) -> dict[str, str]:
    """Run the jobs that are not current, in order; returns job -> "skipped" | "ran" | "failed"
    (a failed job's dependents are "blocked"). Stops nothing on a failure: the others still run."""
    runs.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress(len(jobs))
    status: dict[str, str] = {}
    for i, job in enumerate(jobs):
        if any(status.get(d) in ("failed", "blocked") for d in job.after):
            status[job.name] = "blocked"
            progress.show(i + 1, f"{job.name}: blocked (an input failed)")
            continue
        rev = revision or job_revision(job)
        if is_current(job, runs, rev):
            status[job.name] = "skipped"
            progress.show(i + 1, f"{job.name}: up to date, skipped")
            continue
        out = runs / job.name
        out.mkdir(parents=True, exist_ok=True)
        (out / RECORD).unlink(missing_ok=True)
        cmd = [python, "-m", job.module, *job.command(runs)]
        started = time.monotonic()
        with open(out / "log.txt", "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                progress.show(i, f"{job.name}: running {_clock(time.monotonic() - started)}", tick=True)
                time.sleep(poll_s)
        if proc.returncode != 0:
            status[job.name] = "failed"
            progress.show(i + 1, f"{job.name}: FAILED (exit {proc.returncode}), see {out / 'log.txt'}")
            continue
        write_json(out / RECORD, {**record_for(job, runs, rev, current_inputs(job, runs)), "run_id": uuid.uuid4().hex,
                                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "seconds": round(time.monotonic() - started, 1)})
        status[job.name] = "ran"
        progress.show(i + 1, f"{job.name}: done in {_clock(time.monotonic() - started)}")
    progress.show(len(jobs), "finished: " + ", ".join(f"{k} {v}" for k, v in status.items()), final=True)
    return status


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--seeds", type=int, default=None, help="seeds per experiment (default: the preset's)")
    p.add_argument("--runs", default=None, help="runs root (default: runs/reproduce-<preset>)")
    p.add_argument("--docs", default=None,
                   help="also write the report here, figures copied to DOCS/figures (e.g. docs)")


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs or f"runs/reproduce-{args.preset}")
    status = run_jobs(plan(args.preset, args.seeds), runs)
    md, page = write_report(runs)
    print(f"report: {md} and {page}")
    if args.docs:
        md, page = write_report(runs, args.docs, figures_dir=Path(args.docs) / "figures")
        print(f"report: {md} and {page}")
    return 0 if all(v in ("ran", "skipped") for v in status.values()) else 1

"""``python -m training reproduce --preset cpu|paper [--seeds N]`` (``make reproduce``): run every
experiment of both papers in one preset, then write the report (training/report.py).

Each experiment is one job: a ``python -m training ...`` command run as a child process, its
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
from dataclasses import dataclass, field
from pathlib import Path

from .runs import REPO_ROOT, code_revision, write_json

RECORD = "reproduce.json"


@dataclass(frozen=True)
class Job:
    name: str  # its run directory under the runs root
    argv: tuple[str, ...]  # after ``python -m training``; ``{out}`` and ``{runs}`` are filled in
    after: tuple[str, ...] = field(default=())  # jobs whose outputs this one reads
    code: tuple[str, ...] = field(default=())  # its experiment packages (see job_revision)

    def command(self, runs: Path) -> list[str]:
        return [a.format(out=runs / self.name, runs=runs) for a in self.argv]


def plan(preset: str, seeds: int | None) -> list[Job]:
    """Every experiment of both papers, in the order they run."""
    seed_args = ("--seeds", str(seeds)) if seeds else ()
    first = 0  # every preset's first seed: the runs whose checkpoints the later jobs read
    # Figure 1 of Ioffe with 5 seeds in either preset (its cpu preset alone trains one): 5 stacked
    # seeds cost ~3x one seed, ~3 minutes here.
    ioffe_seeds = ("--seeds", str(seeds or 5))
    common = ("--preset", preset, "--no-progress", "--out", "{out}")
    return [
        Job("ioffe-fig1", ("ioffe-fig1", *common, *ioffe_seeds), code=IOFFE),
        # BN for one image at test time, on Figure 1's BN network (first seed) and on the VGG of
        # Santurkar's Figure 1 (BN, lr 0.1, first seed; its first 2,000 test images).
        Job("ioffe-bn-test-time", ("bn-test-time", "{runs}/ioffe-fig1", "--out", "{out}"), after=("ioffe-fig1",),
            code=IOFFE),
        Job("santurkar-fig1", ("santurkar-fig1", *common, *seed_args), code=SANTURKAR),
        Job("santurkar-bn-test-time", ("bn-test-time", f"{{runs}}/santurkar-fig1/bn_lr0.1_seed{first}/checkpoint.pt",
                                       "--images", "2000", "--out", "{out}"), after=("santurkar-fig1",),
            code=IOFFE + SANTURKAR),
        Job("santurkar-fig2", ("santurkar-fig2", *common, *seed_args), code=SANTURKAR),
        # Algorithm 2's population statistics vs the EMA: the Ioffe MLP + BN, and Figure 2's BN and
        # noisy-BN VGGs (the noisy one with the noise on and off during the passes).
        Job("recalibrate", ("recalibrate", "{runs}/ioffe-fig1/bn/checkpoint.pt",
                            f"{{runs}}/santurkar-fig2/bn_lr0.1_seed{first}/checkpoint.pt",
                            f"{{runs}}/santurkar-fig2/noisy_bn_lr0.1_seed{first}/checkpoint.pt",
                            "--compare-noise", "--run-dir", "{out}"), after=("ioffe-fig1", "santurkar-fig2"),
            code=IOFFE + SANTURKAR),
        Job("santurkar-fig3", ("santurkar-fig3", *common), code=SANTURKAR),
        Job("santurkar-fig4", ("santurkar-fig4", *common), code=SANTURKAR),
        Job("santurkar-fig5", ("santurkar-fig5", *common, *seed_args), code=SANTURKAR),
    ]


# The code every job runs (data, models, loop, export, serving); each experiment package counts
# only for the jobs that run it, and the report / orchestration code for none (a report change
# does not redo a run).
EXPERIMENT_PACKAGES = ("training/ioffe", "training/santurkar")
NOT_RUN_CODE = ("training/report.py", "training/inference_report.py", "training/reproduce.py",
                "training/ioffe/report.py", "training/santurkar/report.py")
IOFFE, SANTURKAR = ("training/ioffe",), ("training/santurkar",)


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
        cmd = [python, "-m", "training", *job.command(runs)]
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
    from .report import write_report
    md, page = write_report(runs)
    print(f"report: {md} and {page}")
    if args.docs:
        md, page = write_report(runs, args.docs, figures_dir=Path(args.docs) / "figures")
        print(f"report: {md} and {page}")
    return 0 if all(v in ("ran", "skipped") for v in status.values()) else 1

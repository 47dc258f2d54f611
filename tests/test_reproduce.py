"""training/reproduce.py: which jobs run, which are skipped, and what a failure blocks. The
experiments are replaced by a fake interpreter that only writes a run record."""

import io
import os
import stat
from pathlib import Path

from training.reproduce import Job, Progress, is_current, plan, run_jobs

FAKE = """#!/bin/sh
# called as: FAKE -m training <experiment> ... --out DIR ...
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; prev="$a"; done
echo "$3" >> "$(dirname "$0")/calls.txt"
case "$*" in *--boom*) echo boom; exit 3;; esac
mkdir -p "$out" && echo '{"experiment": "'"$3"'"}' > "$out/config.json"
"""

JOBS = [Job("a", ("exp-a", "--out", "{out}")),
        Job("b", ("exp-b", "--out", "{out}", "--from", "{runs}/a"), after=("a",)),
        Job("c", ("exp-c", "--out", "{out}"))]


def fake_python(tmp_path: Path) -> str:
    exe = tmp_path / "fakepython"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls.txt"
    return f.read_text().split() if f.exists() else []


def quiet() -> Progress:
    return Progress(3, stream=io.StringIO())


def test_runs_then_skips_then_redoes_only_the_deleted_run_and_its_dependents(tmp_path):
    py, runs = fake_python(tmp_path), tmp_path / "runs"
    assert run_jobs(JOBS, runs, python=py, revision="r1", progress=quiet(), poll_s=0.01) == \
        {"a": "ran", "b": "ran", "c": "ran"}
    assert (runs / "b" / "log.txt").read_text().startswith("$ ")
    assert run_jobs(JOBS, runs, python=py, revision="r1", progress=quiet(), poll_s=0.01) == \
        {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert calls(tmp_path) == ["exp-a", "exp-b", "exp-c"]

    import shutil
    shutil.rmtree(runs / "a")  # b reads a: both are redone, c is not
    assert run_jobs(JOBS, runs, python=py, revision="r1", progress=quiet(), poll_s=0.01) == \
        {"a": "ran", "b": "ran", "c": "skipped"}
    # A new code revision redoes everything.
    assert all(not is_current(j, runs, "r2") for j in JOBS)
    assert all(is_current(j, runs, "r1") for j in JOBS)


def test_a_failure_blocks_its_dependents_but_not_the_others(tmp_path):
    py, runs = fake_python(tmp_path), tmp_path / "runs"
    jobs = [Job("a", ("exp-a", "--out", "{out}", "--boom")), *JOBS[1:]]
    status = run_jobs(jobs, runs, python=py, revision="r1", progress=quiet(), poll_s=0.01)
    assert status == {"a": "failed", "b": "blocked", "c": "ran"}
    assert "boom" in (runs / "a" / "log.txt").read_text()
    assert not (runs / "a" / "reproduce.json").exists()


def test_progress_is_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    s = Tty()
    p = Progress(2, stream=s)
    p.show(0, "a: running")
    p.show(1, "a: done")
    assert s.getvalue().count("\n") == 0 and s.getvalue().count("\r") == 2
    p.show(2, "finished", final=True)
    assert s.getvalue().endswith("\n")


def test_plan_names_every_job_once_with_its_run_directory():
    jobs = plan("cpu", 3)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) and "ioffe-fig1" in names
    for j in jobs:
        cmd = j.command(Path("R"))
        flag = "--out" if "--out" in cmd else "--run-dir"
        assert cmd[cmd.index(flag) + 1].startswith(os.path.join("R", j.name))
        if cmd[0].startswith(("ioffe-fig", "santurkar-fig")):
            assert cmd[cmd.index("--preset") + 1] == "cpu"
            assert "--seeds" not in cmd or cmd[cmd.index("--seeds") + 1] == "3"
        assert set(j.after) <= set(names[:names.index(j.name)])  # inputs run first
    assert {"recalibrate", "ioffe-bn-test-time", "santurkar-bn-test-time"} <= set(names)
    assert "--seeds" in jobs[names.index("ioffe-fig1")].argv
    assert {f"santurkar-fig{i}" for i in range(1, 6)} <= set(names)


def test_code_revision_ignores_docs_but_not_code(tmp_path):
    import subprocess

    from training.runs import code_revision

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "x.py").write_text("a = 1\n")
    (tmp_path / "README.md").write_text("hi\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    paths = ("training",)
    rev = code_revision(tmp_path, paths)
    (tmp_path / "README.md").write_text("docs changed\n")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "docs")
    assert code_revision(tmp_path, paths) == rev
    (tmp_path / "training" / "x.py").write_text("a = 2\n")
    assert code_revision(tmp_path, paths) == rev + "-dirty"
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "code")
    assert code_revision(tmp_path, paths) not in (rev, rev + "-dirty")


def test_a_job_is_redone_for_its_own_code_not_for_the_other_papers_or_the_report(tmp_path):
    import subprocess

    from training.experiments import IOFFE, SANTURKAR
    from training.reproduce import job_revision

    def commit(path, text):
        f = tmp_path / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        for cmd in (["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", path]):
            subprocess.run(["git", *cmd], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for path in ("training/data.py", "training/ioffe/train.py", "training/santurkar/vgg.py", "training/report.py"):
        commit(path, "1\n")
    ioffe, sant = Job("i", ("x",), code=IOFFE), Job("s", ("x",), code=SANTURKAR)

    def revs():
        return job_revision(ioffe, tmp_path), job_revision(sant, tmp_path)
    r0 = revs()
    commit("training/santurkar/vgg.py", "2\n")
    r1 = revs()
    assert r1[0] == r0[0] and r1[1] != r0[1]
    commit("training/report.py", "2\n")
    commit("README.md", "docs\n")
    assert revs() == r1
    commit("training/data.py", "2\n")
    r3 = revs()
    assert r3[0] != r1[0] and r3[1] != r1[1]


def test_progress_off_a_terminal_writes_events_and_a_tick_a_minute_at_most():
    s = io.StringIO()
    p = Progress(2, stream=s)
    for _ in range(100):
        p.show(0, "a: running", tick=True)
    p.show(1, "a: done")
    lines = s.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("a: done")

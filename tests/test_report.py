"""training/report.py: sections assembled from run directories, rendered as Markdown and as a
self-contained HTML page."""

import json
import re
from pathlib import Path

import pytest

from training.report import (
    Claim,
    Question,
    RunInfo,
    Section,
    build_report,
    find_runs,
    render_html,
    write_report,
)

# The smallest valid PNG (1x1, grey).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c636800000082008177cd72b60000000049454e44ae426082")


def make_run(root: Path, name: str, experiment: str, seeds=(0, 1, 2)) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "experiment": experiment, "preset": "cpu", "seeds": list(seeds),
        "config": {"dataset": "mnist", "seed": seeds[0]}, "git_revision": "abc123",
        "started_at": "2026-11-25T18:00:00+0000",
        "environment": {"cpu_count": 2, "torch_threads": 1, "platform": "Linux", "torch": "2.13.0"}}))
    (run / "figure.png").write_bytes(PNG)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "acc": 0.9, "seed": 0}) + "\n")
    return run


def section_from_metrics(run: Path) -> Section:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = rows[-1]["acc"]
    return Section(
        key="exp-a", title="Figure A: a test", context="We trained **two** nets.",
        plotted="Accuracy vs steps.", observed=[f"accuracy `{acc:.2f}` at step {rows[-1]['step']}"],
        interpretation="It <works>.", figures=[run / "figure.png"], run=RunInfo.read(run),
        claims=[Claim("BN ahead", "83% vs 80%", f"{acc:.2f} vs 0.50", True),
                Claim("lr 0.5 | diverges", "yes", "no", False)])


def test_find_runs_and_run_info(tmp_path):
    make_run(tmp_path, "b", "exp-b")
    a = make_run(tmp_path, "a", "exp-a", seeds=(4,))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    runs = find_runs(tmp_path)
    assert runs == {"exp-a": a, "exp-b": tmp_path / "b"}
    info = RunInfo.read(a)
    assert info.seeds == [4] and info.preset == "cpu" and info.dataset == "mnist"
    assert "1 seed (4)" in info.provenance() and "git abc123" in info.provenance()
    assert "CPU (2 cores, 1 torch threads)" in info.machine


def test_report_from_metrics_markdown_and_html(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a", "exp-a")
    builders = {"exp-a": section_from_metrics, "exp-missing": section_from_metrics}
    questions = [lambda found: Question("Why?", f"Because of {sorted(found)}.", ["evidence 1"]),
                 lambda found: None]
    report = build_report(runs, builders, questions)
    assert [s.key for s in report.sections] == ["exp-a"] and report.missing == ["exp-missing"]
    assert [q.title for q in report.questions] == ["Why?"]

    docs = tmp_path / "docs"
    md_path, html_path = write_report(runs, docs, figures_dir=docs / "figures", report=report)
    md = md_path.read_text()
    for part in ("**Context.**", "**What is plotted.**", "**What we observe.**", "**Interpretation.**"):
        assert md.count(part) == 1
    assert "- accuracy `0.90` at step 10" in md  # the number read from metrics.jsonl
    assert "| BN ahead | 83% vs 80% | 0.90 vs 0.50 | **PASS** |" in md
    assert "| lr 0.5 \\| diverges | yes | no | **DIFFERS** |" in md
    assert "Claims checked: 2; PASS 1, DIFFERS 1." in md
    assert "Not run (no run directory found): exp-missing." in md
    assert "![Figure A: a test](figures/exp-a.png)" in md
    assert (docs / "figures" / "exp-a.png").read_bytes() == PNG
    assert "3 seeds (0, 1, 2)" in md and "Because of ['exp-a']." in md

    page = html_path.read_text()
    assert "It &lt;works&gt;." in page and "<b>two</b>" in page and "<code>0.90</code>" in page
    assert "data:image/png;base64," in page and "<script" not in page
    # self-contained: no external resource of any kind
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)
    assert "<td class='DIFFERS'>DIFFERS</td>" in page


def test_report_is_regenerated_identically(tmp_path):
    make_run(tmp_path, "a", "exp-a")
    builders = {"exp-a": section_from_metrics}
    first = render_html(build_report(tmp_path, builders, []))
    assert render_html(build_report(tmp_path, builders, [])) == first


@pytest.mark.parametrize("text,expected", [("a **b** `c`", "a <b>b</b> <code>c</code>"),
                                           ("`**x**`", "<code>**x**</code>"),
                                           ("x < y & z", "x &lt; y &amp; z")])
def test_inline_markdown(text, expected):
    from training.report import _md_inline
    assert _md_inline(text) == expected

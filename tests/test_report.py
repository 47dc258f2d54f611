"""training/report.py: sections assembled from run directories, rendered as Markdown and as a
self-contained HTML page."""

import json
import re
from pathlib import Path

import pytest

from training.report import build_report, find_runs, render_html, render_markdown, write_report
from training.report_types import Claim, Question, RunInfo, Section

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
    assert runs == {"exp-a": [a], "exp-b": [tmp_path / "b"]}
    a2 = make_run(tmp_path, "a2", "exp-a")
    assert find_runs(tmp_path)["exp-a"] == [a, a2]  # an experiment may have several runs
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
    assert "**The papers' claims**: 2 checked; PASS 1, DIFFERS 1, INCONCLUSIVE 0." in md
    assert "**The project's own checks" in md and "0 checked" in md
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


# --- BN at inference: the bn-test-time and recalibrate sections, and the two questions -----------

def _run_with_results(root: Path, name: str, experiment: str, results) -> Path:
    run = make_run(root, name, experiment, seeds=(0,))
    (run / "results.json").write_text(json.dumps(results))
    return run


def _test_time_results(batch1_acc: float, eval_accs=(0.97, 0.97, 0.97), identical=True) -> dict:
    return {"checkpoint": "x/bn/checkpoint.pt", "model": {"name": "mlp3x100", "bn": True}, "dataset": "mnist",
            "bn_statistics": "ema", "binarized_input": False, "images": 1000, "batch_sizes": [1, 2, 4],
            "eval_mode_accuracy": {"1": eval_accs[0], "2": eval_accs[1], "4": eval_accs[2]},
            "train_mode_accuracy": {"1": batch1_acc, "2": 0.41, "4": 0.78},
            "batch_of_one": {"distinct_predictions": 1, "predicted_class": "8", "share_of_images": 1.0,
                             "max_abs_logit_spread": 0.0, "values_per_channel_at_batch_1": [1, 1, 1],
                             "collapsed_layers": [1, 2, 3], "chance_level_of_that_class": 0.0974},
            "onnx": {"file": "model.onnx", "accuracy": 0.97,
                     "bit_identity": {"images": 1024, "batch": 64, "provider": "CPUExecutionProvider", "threads": 1,
                                      "identical_alone_vs_batch": 1024 if identical else 1000,
                                      "identical_alone_vs_shifted_batch": 960, "shifted_images": 960,
                                      "max_abs_diff": 0.0 if identical else 1e-6, "all_identical": identical}}}


def test_bn_test_time_section_and_single_image_question_read_the_results(tmp_path):
    from training.inference_report import single_image_question, test_time_section
    good = _run_with_results(tmp_path, "mlp", "bn-test-time", _test_time_results(0.0974))
    s = test_time_section(good)
    assert s.key == "mlp" and "Ioffe's 3x100 sigmoid MLP + BN" in s.title
    assert [c.passed for c in s.claims] == [True, True, True]
    assert any("1: 0.0974, 2: 0.4100, 4: 0.7800" in o for o in s.observed)
    bad = _run_with_results(tmp_path, "bad", "bn-test-time", _test_time_results(0.5, (0.97, 0.96, 0.97), False))
    assert [c.passed for c in test_time_section(bad).claims] == [False, False, False]

    recal = _run_with_results(tmp_path, "recal", "recalibrate", [
        {"checkpoint": "a/noisy/checkpoint.pt", "model": "vgg16", "dataset": "fashion-mnist", "noise": False,
         "ema_test_accuracy": 0.51, "population_test_accuracy": 0.86, "batches": 200, "batch_size": 128}])
    q = single_image_question({"bn-test-time": [good], "recalibrate": [recal]})
    assert "variance 0" in q.answer
    assert any("accuracy 0.0974" in e and "1024 of 1024" in e for e in q.evidence)
    assert any("0.5100 with the moving average, 0.8600" in e for e in q.evidence)
    assert single_image_question({}) is None


def test_recalibrate_section_marks_a_loss_as_differs(tmp_path):
    from training.inference_report import recalibrate_section
    run = _run_with_results(tmp_path, "recal", "recalibrate", [
        {"checkpoint": "a/bn/checkpoint.pt", "model": "mlp3x100", "dataset": "mnist", "noise": None,
         "ema_test_accuracy": 0.9748, "population_test_accuracy": 0.9760, "batches": 200, "batch_size": 60},
        {"checkpoint": "b/noisy/checkpoint.pt", "model": "vgg16", "dataset": "fashion-mnist", "noise": True,
         "ema_test_accuracy": 0.70, "population_test_accuracy": 0.60, "batches": 200, "batch_size": 128}])
    s = recalibrate_section(run)
    assert [c.passed for c in s.claims] == [True, False]
    assert "0.9760 vs 0.9748 (+0.0012)" in s.claims[0].ours and s.figures == []


def test_report_html_in_headless_chromium_shows_every_part_and_fetches_nothing(tmp_path):
    """The page as a reader opens it: from a file, in a real browser, every figure decoded, the
    four parts of each section present, no request for any other resource."""
    from conftest import chromium_driver
    from selenium.webdriver.common.by import By

    runs = tmp_path / "runs"
    make_run(runs, "a", "exp-a")
    make_run(runs, "b", "exp-b")
    builders = {"exp-a": section_from_metrics, "exp-b": section_from_metrics}
    questions = [lambda found: Question("Why?", "Because.", ["evidence 1"])]
    _, page = write_report(runs, report=build_report(runs, builders, questions))
    browser = chromium_driver()
    try:
        browser.get(page.as_uri())
        assert browser.title == "bnserve: reproduced figures"
        h2 = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert h2 == ["Verdicts", "Figure A: a test", "Figure A: a test", "Why?"]
        h3 = [h.text for h in browser.find_elements(By.TAG_NAME, "h3")]
        assert h3 == ["Context", "What is plotted", "What we observe", "Interpretation"] * 2
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) == 2
        assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                   for i in images)
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'))")
        assert fetched == []
        assert browser.get_screenshot_as_png().startswith(b"\x89PNG")
    finally:
        browser.quit()


def test_smoothness_question_follows_the_verdicts_of_figures_2_to_5(tmp_path, monkeypatch):
    import training.santurkar.report as sr
    from training.inference_report import smoothness_question

    verdicts = {"santurkar-fig2": [True, True, True], "santurkar-fig3": [True, True],
                "santurkar-fig4": [True, True, True], "santurkar-fig5": [True]}

    def fake_section(run_dir):
        name = Path(run_dir).name
        claims = [Claim(f"{name} claim {i}", "paper", f"ours {i}", ok) for i, ok in enumerate(verdicts[name])]
        return Section(key=name, title=name, context="", plotted="", observed=[], interpretation="",
                       claims=claims, figures=[], run=None)
    monkeypatch.setattr(sr, "section", fake_section)
    runs = {name: [tmp_path / name] for name in verdicts}
    q = smoothness_question(runs)
    assert "smoother with BN (smaller loss range" in q.answer and "(all 3 claims PASS)" in q.answer
    assert "evidence for the smoothness view" in q.answer
    # one DIFFERS and one INCONCLUSIVE: named in the evidence and counted in the answer, no conclusion drawn
    verdicts["santurkar-fig2"] = [True, False, None]
    q = smoothness_question(runs)
    assert q.evidence[0].startswith("**Fig. 2") and "3 claims: PASS 1, DIFFERS 1, INCONCLUSIVE 1" in q.evidence[0]
    assert "DIFFERS: santurkar-fig2 claim 1 (ours 1)" in q.evidence[0]
    assert "INCONCLUSIVE: santurkar-fig2 claim 2 (ours 2)" in q.evidence[0]
    assert "here 1 of 3 claims PASS, 1 DIFFER and 1 are INCONCLUSIVE" in q.answer
    assert "the evidence is mixed" in q.answer and "evidence for the smoothness view" not in q.answer
    assert smoothness_question({}) is None


def test_santurkar_interpretation_names_every_verdict():
    from training.santurkar.report import interpretation
    ok, bad, unsure = Claim("A holds", "p", "o", True), Claim("B holds", "p", "o", False), Claim("C", "p", "o", None)
    assert interpretation([ok], "All good.", "Caveat.") == "All good."
    got = interpretation([ok, bad, unsure], "All good.", "Caveat.")
    assert got.startswith("Caveat. **DIFFERS** (1 of 3, the opposite of the paper, beyond the seed spread): B holds.")
    assert "**INCONCLUSIVE** (1 of 3, within the seed spread or seeds disagree: no verdict): C." in got
    assert got.endswith("**PASS** (1 of 3, as the paper, beyond the seed spread): A holds.")


def test_own_checks_are_counted_apart_and_the_departures_come_first(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a", "exp-a")
    make_run(runs, "c", "recalibrate")
    fig = make_run(runs, "f", "santurkar-fig5")
    record = json.loads((fig / "config.json").read_text())
    record["config"] = {"dataset": "fashion-mnist", "width": 0.125, "steps": 1000, "init": "kaiming", "seed": 0}
    (fig / "config.json").write_text(json.dumps(record))
    builders = {"exp-a": section_from_metrics, "recalibrate": section_from_metrics}
    md = render_markdown(build_report(runs, builders, []))
    assert "**The papers' claims**: 2 checked; PASS 1, DIFFERS 1, INCONCLUSIVE 0." in md
    assert ("**The project's own checks (BN at test time, Algorithm 2: not claims of the papers)**: 2 checked; "
            "PASS 1, DIFFERS 1, INCONCLUSIVE 0.") in md
    # the departures table is read from the runs' configs, and stands above the verdicts
    assert md.index("## Departures from the papers") < md.index("## Verdicts") < md.index("## Contents")
    assert "| Santurkar Figs. 5 | fashion-mnist (28 px, 1 channel) instead of CIFAR-10" in md
    assert "1,000 training steps instead of 15,000" in md and "He (kaiming) init instead of Glorot" in md
    assert "INCONCLUSIVE" in md.split("## Verdicts", 1)[1].split("## Contents", 1)[0]
    assert Claim("x", "p", "o", None).verdict == "INCONCLUSIVE"


def test_a_santurkar_section_is_built_without_torch_or_the_training_loop():
    """The report of a Santurkar figure reads its run record and metrics alone."""
    import subprocess
    import sys
    code = ("import sys, training.santurkar.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib') "
            "or m in ('training.loop', 'training.experiments', 'training.santurkar.experiments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "[]"

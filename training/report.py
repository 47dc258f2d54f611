"""One report for every reproduced figure: ``python -m training report RUNS_DIR``.

Each figure is explained in the four parts a reader (a course, a reading group) asks for:
**context** (what was run, what problem it addresses), **what is plotted**, **what we observe**
(our numbers, mean +- std over seeds) and the **interpretation**, followed by each of the paper's
claims marked PASS or DIFFERS with the paper's own number or statement beside ours.

Everything is read from the run directories (``config.json``, metrics files, figures): nothing is
retrained, so the report can be regenerated and diffed. The experiments supply their sections
through the experiment registry (``training.experiments``: each experiment's section builder, a
function of a run directory), so this module only assembles and renders: Markdown, and a self-contained HTML page (figures embedded as data URIs,
no external resources).
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import EXPERIMENTS, QUESTIONS
from .records import RunRecord
from .report_types import Question, QuestionBuilder, Section, SectionBuilder
from .verdicts import RULE, VERDICTS
from .verdicts import count as count_verdicts

# Experiments whose checks are the project's own (BN at test time, Algorithm 2's statistics),
# not claims of the papers: counted and tabled apart from them.
OWN_CHECKS = ("recalibrate", "bn-test-time")


def find_runs(runs_dir: str | Path) -> dict[str, list[Path]]:
    """Experiment name -> its run directories (sorted by path), for every directory under
    ``runs_dir`` (itself included) that holds a run record naming an experiment. An
    experiment can have several runs (e.g. ``bn-test-time`` on the MLP and on the VGG)."""
    runs: dict[str, list[Path]] = {}
    for run_dir, record in RunRecord.find(runs_dir):
        runs.setdefault(record.experiment, []).append(run_dir)
    return runs


@dataclass(frozen=True)
class Report:
    sections: list[Section]
    questions: list[Question]
    missing: list[str]  # experiments with a builder but no run directory
    generated_by: str
    departures: list[tuple[str, str, str, str]] = field(default_factory=list)  # (where, what, why, may change)


def build_report(runs_dir: str | Path, builders: dict[str, SectionBuilder] | None = None,
                 questions: list[QuestionBuilder] | None = None) -> Report:
    if builders is None:
        builders = {e.name: e.section for e in EXPERIMENTS.values() if e.section is not None}
    if questions is None:
        questions = list(QUESTIONS)
    runs = find_runs(runs_dir)
    sections = [builders[name](run) for name in builders for run in runs.get(name, [])]
    answered = [q for q in (qb(runs) for qb in questions) if q is not None]
    missing = [name for name in builders if name not in runs]
    from .departures import departures
    return Report(sections=sections, questions=answered, missing=missing,
                  generated_by=f"python -m training report {runs_dir}", departures=departures(runs))


def is_own_check(section: Section) -> bool:
    """The project's own checks (BN at test time, Algorithm 2), not a claim of the papers."""
    return section.run.experiment in OWN_CHECKS


def verdict_rows(report: Report, own: bool) -> list[tuple[str, list[str]]]:
    """(section title, its verdicts) of the papers' sections (``own`` False) or of the project's
    own checks (``own`` True)."""
    return [(s.title, [c.verdict for c in s.claims]) for s in report.sections
            if s.claims and is_own_check(s) == own]


def _verdict_summary(report: Report) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    return [("The papers' claims", verdict_rows(report, own=False)),
            ("The project's own checks (BN at test time, Algorithm 2: not claims of the papers)",
             verdict_rows(report, own=True))]


def _figure_name(section: Section, fig: Path) -> str:
    return f"{section.key}.png" if len(section.figures) == 1 else f"{section.key}-{fig.stem}.png"


def render_markdown(report: Report, figure_links: dict[Path, str] | None = None) -> str:
    """The report as Markdown; ``figure_links`` maps a figure file to the link to write
    (default: its path as given)."""
    links = figure_links or {}
    out = ["# Reproduced figures: Ioffe & Szegedy 2015 and Santurkar et al. 2018", "",
           f"Generated from the run directories' metrics alone by `{report.generated_by}`.", ""]
    if report.departures:
        out += ["## Departures from the papers", "",
                "Every place where these runs do not do what the papers did (or where the papers are silent "
                "and the choice is ours), why, and what it may change.", "",
                "| where | what | why | what it may change |", "|---|---|---|---|"]
        out += ["| " + " | ".join(_cell(x) for x in d) + " |" for d in report.departures]
        out.append("")
    out += ["## Verdicts", "", RULE, ""]
    for heading, rows in _verdict_summary(report):
        allv = [v for _, vs in rows for v in vs]
        out += [f"**{heading}**: {len(allv)} checked; {count_verdicts(allv)}.", ""]
        if rows:
            out += ["| section | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
            out += [f"| {_cell(t)} | " + " | ".join(str(vs.count(v)) for v in VERDICTS) + " |" for t, vs in rows]
            out.append("")
    if report.missing:
        out += [f"Not run (no run directory found): {', '.join(report.missing)}.", ""]
    out += ["## Contents", ""]
    out += [f"- [{s.title}](#{_anchor(s.title)})" for s in report.sections]
    out += [f"- [{q.title}](#{_anchor(q.title)})" for q in report.questions]
    out.append("")
    for s in report.sections:
        out += [f"## {s.title}", "", s.run.provenance(), ""]
        for fig in s.figures:
            out += [f"![{s.title}]({links.get(fig, str(fig))})", ""]
        out += ["**Context.** " + s.context, "", "**What is plotted.** " + s.plotted, "",
                "**What we observe.**", ""]
        out += [f"- {o}" for o in s.observed]
        out += ["", "**Interpretation.** " + s.interpretation, ""]
        if s.claims:
            out += ["| claim | paper | ours | verdict |", "|---|---|---|---|"]
            out += [f"| {_cell(c.statement)} | {_cell(c.paper)} | {_cell(c.ours)} | **{c.verdict}** |"
                    for c in s.claims]
            out.append("")
    for q in report.questions:
        out += [f"## {q.title}", "", q.answer, ""]
        out += [f"- {e}" for e in q.evidence]
        out.append("")
    return "\n".join(out)


def render_html(report: Report) -> str:
    """A self-contained page: figures as data URIs, inline CSS, no scripts, fonts or links out."""
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<title>bnserve: reproduced figures</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
             "line-height:1.45;color:#222}img{max-width:100%;border:1px solid #ddd}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
             "vertical-align:top}.PASS{color:#075e07;font-weight:bold}.DIFFERS{color:#a33;font-weight:bold}.INCONCLUSIVE{color:#8a6d00;font-weight:bold}"
             ".prov{color:#555;font-size:.9rem}</style></head><body>",
             "<h1>Reproduced figures: Ioffe &amp; Szegedy 2015 and Santurkar et al. 2018</h1>",
             f"<p>Generated from the run directories' metrics alone by <code>{e(report.generated_by)}</code>.</p>"]
    if report.departures:
        parts.append("<h2 id='departures-from-the-papers'>Departures from the papers</h2><table><tr><th>where</th>"
                     "<th>what</th><th>why</th><th>what it may change</th></tr>")
        parts += ["<tr>" + "".join(f"<td>{_md_inline(x)}</td>" for x in d) + "</tr>" for d in report.departures]
        parts.append("</table>")
    parts.append(f"<h2 id='verdicts'>Verdicts</h2><p>{_md_inline(RULE)}</p>")
    for heading, rows in _verdict_summary(report):
        allv = [v for _, vs in rows for v in vs]
        parts.append(f"<p><b>{e(heading)}</b>: {len(allv)} checked; {e(count_verdicts(allv))}.</p>")
        parts.append("<table><tr><th>section</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS) + "</tr>"
                     + "".join(f"<tr><td>{e(t)}</td>" + "".join(f"<td>{vs.count(v)}</td>" for v in VERDICTS)
                               + "</tr>" for t, vs in rows) + "</table>")
    if report.missing:
        parts.append(f"<p>Not run (no run directory found): {e(', '.join(report.missing))}.</p>")
    parts.append("<ul>" + "".join(f"<li><a href='#{_anchor(x)}'>{e(x)}</a></li>"
                                  for x in [s.title for s in report.sections] + [q.title for q in report.questions])
                 + "</ul>")
    for s in report.sections:
        parts.append(f"<section><h2 id='{_anchor(s.title)}'>{e(s.title)}</h2>")
        parts.append(f"<p class='prov'>{_md_inline(s.run.provenance())}</p>")
        for fig in s.figures:
            data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
            parts.append(f"<img alt='{e(s.title)}' src='data:image/png;base64,{data}'>")
        parts.append(f"<h3>Context</h3><p>{_md_inline(s.context)}</p>")
        parts.append(f"<h3>What is plotted</h3><p>{_md_inline(s.plotted)}</p>")
        parts.append("<h3>What we observe</h3><ul>" + "".join(f"<li>{_md_inline(o)}</li>" for o in s.observed) + "</ul>")
        parts.append(f"<h3>Interpretation</h3><p>{_md_inline(s.interpretation)}</p>")
        if s.claims:
            parts.append("<table><tr><th>claim</th><th>paper</th><th>ours</th><th>verdict</th></tr>")
            parts += [f"<tr><td>{_md_inline(c.statement)}</td><td>{_md_inline(c.paper)}</td>"
                      f"<td>{_md_inline(c.ours)}</td><td class='{c.verdict}'>{c.verdict}</td></tr>"
                      for c in s.claims]
            parts.append("</table>")
        parts.append("</section>")
    for q in report.questions:
        parts.append(f"<section><h2 id='{_anchor(q.title)}'>{e(q.title)}</h2><p>{_md_inline(q.answer)}</p>")
        if q.evidence:
            parts.append("<ul>" + "".join(f"<li>{_md_inline(x)}</li>" for x in q.evidence) + "</ul>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None,
                 figures_dir: str | Path | None = None, report: Report | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (default: ``runs_dir``). With
    ``figures_dir``, each section's figure is copied there as ``<experiment>.png`` and the
    Markdown links to that copy (how docs/report.md uses docs/figures/)."""
    out_dir = Path(out_dir or runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report or build_report(runs_dir)
    links: dict[Path, str] = {}
    for s in report.sections:
        for fig in s.figures:
            if figures_dir is not None:
                dest = Path(figures_dir) / _figure_name(s, fig)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if Path(fig).resolve() != dest.resolve():
                    shutil.copyfile(fig, dest)
                target = dest
            else:
                target = Path(fig)
            links[fig] = _relative(target, out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(report, links))
    page.write_text(render_html(report))
    return md, page


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _anchor(title: str) -> str:
    keep = "".join(ch.lower() if ch.isalnum() else "-" if ch in " -_" else "" for ch in title)
    return "-".join(p for p in keep.split("-") if p)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_inline(text: str) -> str:
    """The little Markdown the sections use (``**bold**``, ```code```), as escaped HTML."""
    out, bold, code = [], False, False
    i = 0
    text = html.escape(text)
    while i < len(text):
        if text.startswith("**", i) and not code:
            out.append("</b>" if bold else "<b>")
            bold, i = not bold, i + 2
        elif text[i] == "`":
            out.append("</code>" if code else "<code>")
            code, i = not code, i + 1
        else:
            out.append(text[i])
            i += 1
    if code:
        out.append("</code>")
    if bold:
        out.append("</b>")
    return "".join(out)

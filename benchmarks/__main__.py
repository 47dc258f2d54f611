"""``python -m benchmarks {inference,serving,training,upload,all} [--quick] [--write docs/BENCHMARKS.md]``

Every table compares against its baseline measured in the same run and names the machine.
``all --write docs/BENCHMARKS.md`` regenerates the published page."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from .common import machine

SUITES = {
    "inference": "benchmarks.inference",
    "serving": "benchmarks.serving_http",
    "training": "benchmarks.training",
    "upload": "benchmarks.upload_memory",
}
TITLES = {
    "inference": "Inference in process (batch-1 latency, batch-32 throughput)",
    "serving": "Serving over HTTP on 127.0.0.1",
    "training": "Training speed",
    "upload": "Upload memory and time (one request's preprocessing, per image format)",
}


def render(results: list[dict], command: str, targets: str = "") -> str:
    """The markdown page; ``targets`` is benchmarks.targets.render of the same results."""
    out = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with `{command}`; regenerate with "
        "`.venv/bin/python -m benchmarks all --write docs/BENCHMARKS.md`.",
        "Each table's ratios are against the baseline measured in the same run, same process or "
        "same machine. Benchmarks print numbers; no test asserts on time.",
        "",
    ]
    if targets:
        out += ["## Targets", "", targets, ""]
    for r in results:
        out += [f"## {TITLES[r['name']]}", "", r.get("intro", "").strip(), "", r["table"], ""]
        if r.get("note"):
            out += [r["note"], ""]
        for title, body in r.get("sections", []):
            out += [f"### {title}", "", body.strip(), ""]
    return "\n".join(line for line in out) + "\n"


def _sections(page: str) -> list[tuple[str, str]]:
    """(heading, text) of each "## " section, in order; the preamble has heading ""."""
    out, head, lines = [], "", []
    for line in page.splitlines(keepends=True):
        if line.startswith("## "):
            out.append((head, "".join(lines)))
            head, lines = line[3:].strip(), []
        lines.append(line)
    out.append((head, "".join(lines)))
    return out


def merge_page(old: str, new: str, titles: list[str]) -> str:
    """``old`` with the sections named ``titles`` taken from ``new``, and the Targets table's
    rows that ``new`` measured replaced (rows of suites not run stay, with their numbers)."""
    new_sections = dict(_sections(new))
    out = []
    for head, text in _sections(old):
        if head in titles and head in new_sections:
            text = new_sections[head]
        elif head == "Targets" and "Targets" in new_sections:
            fresh = [ln for ln in new_sections["Targets"].splitlines() if ln.startswith("| ") and "---" not in ln]
            keys = {ln.split("|")[1].strip(): ln for ln in fresh}
            kept = [ln for ln in text.splitlines() if not (ln.startswith("| ") and ln.split("|")[1].strip() in keys)]
            header_end = next(i for i, ln in enumerate(kept) if ln.startswith("|---"))
            rows = [ln for ln in kept[header_end + 1:] if ln.startswith("| ")]
            text = "\n".join(["## Targets", "", fresh[0], kept[header_end], *rows, *fresh[1:], "", ""])
        out.append(text)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=[*SUITES, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--device", default="auto", help="training suite: auto, cpu or cuda")
    parser.add_argument("--write", metavar="PATH", help="also write the markdown page here")
    args = parser.parse_args(argv)
    names = list(SUITES) if args.suite == "all" else [args.suite]
    print(f"machine: {machine()}", flush=True)
    results = []
    for name in names:
        print(f"\n== {TITLES[name]} ==", flush=True)
        mod = importlib.import_module(SUITES[name])
        kwargs = {"quick": args.quick}
        if name == "training":
            kwargs["device"] = args.device
        r = mod.run(**kwargs)
        print("\n" + r["table"] + ("\n" + r["note"] if r.get("note") else ""), flush=True)
        results.append(r)
    from .targets import render as render_targets

    targets = render_targets({r["name"]: r for r in results})
    if targets:
        print("\n" + targets, flush=True)
    if args.write:
        cmd = "python -m benchmarks " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
        page = render(results, cmd, targets)
        path = Path(args.write)
        if args.suite != "all" and path.is_file():  # one suite: the rest of the page stays
            page = merge_page(path.read_text(), page, [TITLES[n] for n in names])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page)
        print(f"\nwrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks {inference,serving,training,all} [--quick] [--write docs/BENCHMARKS.md]``

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
}
TITLES = {
    "inference": "Inference in process (batch-1 latency, batch-32 throughput)",
    "serving": "Serving over HTTP on 127.0.0.1",
    "training": "Training speed",
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
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(render(results, cmd, targets))
        print(f"\nwrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

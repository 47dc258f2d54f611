"""``python -m training <experiment> [flags]``: run a paper experiment; ``plot RUN_DIR`` redraws.
The experiments are those of the registry, ``training.experiments``."""

from __future__ import annotations

import argparse
import sys

from . import reproduce
from .config import resolve_config
from .data import DatasetNotFoundError
from .experiments import EXPERIMENTS, add_parsers, replot, replot_summary, studies_epilog
from .report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     epilog="Run by another package (they need the exported file):\n"
                                            + studies_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    p = sub.add_parser("plot", help="redraw a run's figure from its metrics files")
    p.add_argument("run_dir")
    p = sub.add_parser("report", help="report.md + report.html of every run under RUNS_DIR (metrics only)")
    p.add_argument("runs_dir")
    p.add_argument("--out", default=None, help="where to write the report (default: RUNS_DIR)")
    p.add_argument("--figures-dir", default=None, help="copy the figures here and link to the copies")
    p = sub.add_parser("reproduce", help="run every experiment of both papers in a preset, then the report")
    reproduce.add_args(p)
    args = parser.parse_args(argv)
    if args.command == "plot":
        print(replot(args.run_dir))
        summary = replot_summary(args.run_dir)
        if summary:
            print(summary)
        return 0
    if args.command == "report":
        md, page = write_report(args.runs_dir, args.out, args.figures_dir)
        print(f"report: {md} and {page}")
        return 0
    if args.command == "reproduce":
        return reproduce.main(args)
    exp = EXPERIMENTS[args.command]
    if exp.tool is not None:
        try:
            return exp.tool.main(args)
        except (ValueError, FileNotFoundError, DatasetNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        cfg, preset = resolve_config(exp.config, args, exp.presets)
        run_dir = exp.run(cfg, preset)
    except (ValueError, DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    print(f"\nRun written to {run_dir}/: {', '.join(written)}")
    summary = run_dir / "summary.md"
    if summary.exists():
        print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

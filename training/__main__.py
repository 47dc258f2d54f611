"""``python -m training <experiment> [flags]``: run a paper experiment; ``plot RUN_DIR`` redraws."""

from __future__ import annotations

import argparse
import sys

from .config import add_config_args, resolve_config
from .data import DatasetNotFoundError


def _experiments() -> dict:
    from . import classifier, ioffe, santurkar
    return {
        "ioffe-fig1": (ioffe.IoffeFig1Config, ioffe.PRESETS, ioffe.run,
                       "Ioffe & Szegedy 2015 Fig. 1: 3x100 sigmoid MLP with/without BN"),
        "santurkar-fig1": (santurkar.Fig1Config, santurkar.FIG1_PRESETS, santurkar.run_fig1,
                           "Santurkar et al. 2018 Fig. 1: VGG with/without BN at two learning rates"),
        "santurkar-fig2": (santurkar.Fig2Config, santurkar.FIG2_PRESETS, santurkar.run_fig2,
                           "Santurkar et al. 2018 Fig. 2: Standard, +BN, +noisy BN"),
        "santurkar-fig3": (santurkar.Fig3Config, santurkar.FIG3_PRESETS, santurkar.run_fig3,
                           "Santurkar et al. 2018 Fig. 3: internal covariate shift, VGG and 25-layer DLN"),
        "santurkar-fig4": (santurkar.Fig4Config, santurkar.FIG4_PRESETS, santurkar.run_fig4,
                           "Santurkar et al. 2018 Fig. 4: the loss landscape along the gradient, VGG and DLN"),
        "santurkar-fig5": (santurkar.Fig5Config, santurkar.FIG5_PRESETS, santurkar.run_fig5,
                           "Santurkar et al. 2018 Figs. 5, 6: l_p normalisation against Standard and BN"),
        "classifier": (classifier.ClassifierConfig, None, classifier.run,
                       "train any registry model as an image classifier (e.g. the default served model)"),
    }


def _tools() -> dict:
    """Commands that act on a trained checkpoint: {name: (module with add_arguments/main, help)}."""
    from . import bn_test_time, recalibrate
    return {
        "recalibrate": (recalibrate, "Ioffe & Szegedy Algorithm 2: population BN statistics of the "
                                     "final weights into a new checkpoint; test accuracy EMA vs population"),
        "bn-test-time": (bn_test_time, "BN for one image at test time: accuracy vs test batch size with "
                                       "the batch's own statistics, eval mode, the ONNX file; bit-identity"),
    }


def main(argv: list[str] | None = None) -> int:
    experiments = _experiments()
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, presets, _run, help_text) in experiments.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_args(p, cls, presets)
    p = sub.add_parser("plot", help="redraw a run's figure from its metrics files")
    p.add_argument("run_dir")
    p = sub.add_parser("report", help="report.md + report.html of every run under RUNS_DIR (metrics only)")
    p.add_argument("runs_dir")
    p.add_argument("--out", default=None, help="where to write the report (default: RUNS_DIR)")
    p.add_argument("--figures-dir", default=None, help="copy the figures here and link to the copies")
    from . import reproduce
    p = sub.add_parser("reproduce", help="run every experiment of both papers in a preset, then the report")
    reproduce.add_args(p)
    tools = _tools()
    for name, (module, help_text) in tools.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "plot":
        from .figures import replot, replot_summary
        print(replot(args.run_dir))
        summary = replot_summary(args.run_dir)
        if summary:
            print(summary)
        return 0
    if args.command == "report":
        from .report import write_report
        md, page = write_report(args.runs_dir, args.out, args.figures_dir)
        print(f"report: {md} and {page}")
        return 0
    if args.command == "reproduce":
        return reproduce.main(args)
    if args.command in tools:
        try:
            return tools[args.command][0].main(args)
        except (ValueError, FileNotFoundError, DatasetNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    cls, presets, run, _ = experiments[args.command]
    try:
        cfg, preset = resolve_config(cls, args, presets)
        run_dir = run(cfg, preset)
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

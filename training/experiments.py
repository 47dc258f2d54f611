"""The experiment registry: every figure and study of the two papers, in one table.

For each: its config class and presets, the function that runs it, the one that draws its figure
from the metrics alone, its claims, its report section, and the jobs ``reproduce`` runs for it.
``python -m training --help``, ``python -m training plot`` / ``report`` / ``reproduce`` all read
``EXPERIMENTS``; nothing else lists experiments.

Where is what, per experiment (files under ``training/`` unless noted):

| experiment | config, presets | run | figure | claims | report section |
|---|---|---|---|---|---|
| ioffe-fig1 | ioffe/config.py | ioffe/train.py | ioffe/figures.py | ioffe/report.py | ioffe/report.py |
| recalibrate (Algorithm 2) | its flags | recalibrate.py | - | inference_report.py | inference_report.py |
| bn-test-time | its flags | studies/bn_test_time.py (above export) | same | inference_report.py | inference_report.py |
| santurkar-fig1 .. fig5 (Fig. 6 with 5) | santurkar/config.py | santurkar/experiments.py (vgg.py, dln.py) | santurkar/figures.py | santurkar/claims.py | santurkar/report.py |
| classifier (the served model) | classifier.py | classifier.py | - | - | - |

``bn-test-time`` measures the exported ONNX file, so it lives above ``export`` (``studies/``) and
runs as ``python -m studies bn-test-time``; this registry names it by its command only (training
never imports it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from . import classifier, inference_report, recalibrate
from .config import add_config_args
from .ioffe import report as ioffe_report
from .ioffe.config import PRESETS as IOFFE_PRESETS
from .ioffe.config import IoffeFig1Config
from .ioffe.figures import plot_ioffe_fig1
from .ioffe.train import run as run_ioffe_fig1
from .records import RunRecord
from .report_types import Claim, QuestionBuilder, SectionBuilder
from .santurkar import config as sc
from .santurkar import experiments as santurkar
from .santurkar import figures as santurkar_figures
from .santurkar import report as santurkar_report

# --- what reproduce runs ------------------------------------------------------------------------

IOFFE, SANTURKAR, STUDIES = ("training/ioffe",), ("training/santurkar",), ("studies",)  # code of the jobs
FIRST_SEED = 0  # every preset's first seed: the runs whose checkpoints the later jobs read


@dataclass(frozen=True)
class Job:
    """One ``reproduce`` step: a command run as a child process into ``<runs>/<name>``."""

    name: str  # its run directory under the runs root
    argv: tuple[str, ...]  # after ``python -m <module>``; ``{out}`` and ``{runs}`` are filled in
    after: tuple[str, ...] = field(default=())  # jobs whose outputs this one reads
    code: tuple[str, ...] = field(default=())  # its experiment packages (reproduce.job_revision)
    module: str = "training"  # the command's package: ``python -m <module>``

    def command(self, runs: Path) -> list[str]:
        return [a.format(out=runs / self.name, runs=runs) for a in self.argv]


def _common(preset: str) -> tuple[str, ...]:
    return ("--preset", preset, "--no-progress", "--out", "{out}")


def _seed_args(seeds: int | None) -> tuple[str, ...]:
    return ("--seeds", str(seeds)) if seeds else ()


def _ioffe_jobs(preset: str, seeds: int | None) -> list[Job]:
    # 5 seeds in either preset (its cpu preset alone trains one): 5 stacked seeds cost ~3x one.
    return [Job("ioffe-fig1", ("ioffe-fig1", *_common(preset), "--seeds", str(seeds or 5)), code=IOFFE)]


def _santurkar_jobs(name: str, seeded: bool) -> Callable[[str, int | None], list[Job]]:
    def jobs(preset: str, seeds: int | None) -> list[Job]:
        return [Job(name, (name, *_common(preset), *(_seed_args(seeds) if seeded else ())), code=SANTURKAR)]
    return jobs


def _recalibrate_jobs(preset: str, seeds: int | None) -> list[Job]:
    # Algorithm 2's population statistics vs the EMA: the Ioffe MLP + BN, and Figure 2's BN and
    # noisy-BN VGGs (the noisy one with the noise on and off during the passes).
    return [Job("recalibrate", ("recalibrate", "{runs}/ioffe-fig1/bn/checkpoint.pt",
                                f"{{runs}}/santurkar-fig2/bn_lr0.1_seed{FIRST_SEED}/checkpoint.pt",
                                f"{{runs}}/santurkar-fig2/noisy_bn_lr0.1_seed{FIRST_SEED}/checkpoint.pt",
                                "--compare-noise", "--run-dir", "{out}"),
                after=("ioffe-fig1", "santurkar-fig2"), code=IOFFE + SANTURKAR)]


def _bn_test_time_jobs(preset: str, seeds: int | None) -> list[Job]:
    # On Figure 1's BN network (first seed) and on the VGG of Santurkar's Figure 1 (BN, lr 0.1,
    # first seed; its first 2,000 test images).
    return [
        Job("ioffe-bn-test-time", ("bn-test-time", "{runs}/ioffe-fig1", "--out", "{out}"), after=("ioffe-fig1",),
            code=IOFFE + STUDIES, module="studies"),
        Job("santurkar-bn-test-time", ("bn-test-time", f"{{runs}}/santurkar-fig1/bn_lr0.1_seed{FIRST_SEED}/checkpoint.pt",
                                       "--images", "2000", "--out", "{out}"), after=("santurkar-fig1",),
            code=IOFFE + SANTURKAR + STUDIES, module="studies"),
    ]


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    config: type | None = None  # the typed config: ``python -m training NAME`` takes its fields as flags
    presets: dict | None = None  # name -> config; ``config.default_preset`` picks the default
    run: Callable[..., Path] | None = None  # run(cfg, preset) -> the run directory
    tool: ModuleType | None = None  # a command with its own flags (add_arguments / main)
    module: str = "training"  # the package whose CLI runs it: ``python -m <module> NAME``
    plot: Callable[[Path], Path] | None = None  # the figure, from the metrics alone
    claims: Callable[[Path], list[Claim]] | None = None  # the paper's claims, from the metrics alone
    summary: Callable[[Path], Path] | None = None  # summary.md's claims recomputed (``plot`` calls it)
    section: SectionBuilder | None = None  # its section of the report
    jobs: Callable[[str, int | None], list[Job]] | None = None  # what ``reproduce`` runs for it


def _section_claims(section: SectionBuilder) -> Callable[[Path], list[Claim]]:
    return lambda run_dir: section(run_dir).claims


_SANTURKAR_HELP = {
    "santurkar-fig1": "Santurkar et al. 2018 Fig. 1: VGG with/without BN at two learning rates",
    "santurkar-fig2": "Santurkar et al. 2018 Fig. 2: Standard, +BN, +noisy BN",
    "santurkar-fig3": "Santurkar et al. 2018 Fig. 3: internal covariate shift, VGG and 25-layer DLN",
    "santurkar-fig4": "Santurkar et al. 2018 Fig. 4: the loss landscape along the gradient, VGG and DLN",
    "santurkar-fig5": "Santurkar et al. 2018 Figs. 5, 6: l_p normalisation against Standard and BN",
}
_SANTURKAR = {  # name: (config, presets, run, seeded in reproduce)
    "santurkar-fig1": (sc.Fig1Config, sc.FIG1_PRESETS, santurkar.run_fig1, True),
    "santurkar-fig2": (sc.Fig2Config, sc.FIG2_PRESETS, santurkar.run_fig2, True),
    "santurkar-fig3": (sc.Fig3Config, sc.FIG3_PRESETS, santurkar.run_fig3, False),
    "santurkar-fig4": (sc.Fig4Config, sc.FIG4_PRESETS, santurkar.run_fig4, False),
    "santurkar-fig5": (sc.Fig5Config, sc.FIG5_PRESETS, santurkar.run_fig5, True),
}

# In report order (Ioffe & Szegedy, then Santurkar et al.).
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("ioffe-fig1", "Ioffe & Szegedy 2015 Fig. 1: 3x100 sigmoid MLP with/without BN",
               config=IoffeFig1Config, presets=IOFFE_PRESETS, run=run_ioffe_fig1, plot=plot_ioffe_fig1,
               claims=_section_claims(ioffe_report.section), section=ioffe_report.section, jobs=_ioffe_jobs),
    Experiment("recalibrate", "Ioffe & Szegedy Algorithm 2: population BN statistics of the final weights into a "
                              "new checkpoint; test accuracy EMA vs population",
               tool=recalibrate, claims=_section_claims(inference_report.recalibrate_section),
               section=inference_report.recalibrate_section, jobs=_recalibrate_jobs),
    Experiment("bn-test-time", "BN for one image at test time: accuracy vs test batch size with the batch's own "
                               "statistics, eval mode, the ONNX file; bit-identity",
               module="studies", claims=_section_claims(inference_report.test_time_section),
               section=inference_report.test_time_section, jobs=_bn_test_time_jobs),
    *[Experiment(name, _SANTURKAR_HELP[name], config=cfg, presets=presets, run=run,
                 plot=santurkar_figures.PLOTTERS[name], claims=santurkar_report.figure_claims,
                 summary=santurkar.refresh_claims, section=santurkar_report.section,
                 jobs=_santurkar_jobs(name, seeded))
      for name, (cfg, presets, run, seeded) in _SANTURKAR.items()],
    Experiment("classifier", "train any registry model as an image classifier (e.g. the default served model)",
               config=classifier.ClassifierConfig, run=classifier.run),
]}

# The conceptual questions the report answers from every run found.
QUESTIONS: list[QuestionBuilder] = inference_report.questions()


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def reproduce_jobs(preset: str, seeds: int | None) -> list[Job]:
    """Every experiment's jobs, each after the jobs it reads (otherwise in registry order)."""
    placed: list[Job] = []
    waiting: list[Job] = []
    for job in (j for e in EXPERIMENTS.values() if e.jobs for j in e.jobs(preset, seeds)):
        waiting.append(job)
        progress = True
        while progress:
            done = {j.name for j in placed}
            ready = [j for j in waiting if all(d in done for d in j.after)]
            progress = bool(ready)
            for j in ready[:1]:
                placed.append(j)
                waiting.remove(j)
    if waiting:
        raise ValueError(f"jobs waiting on jobs no experiment runs: {[(j.name, j.after) for j in waiting]}")
    return placed


def replot(run_dir: str | Path) -> Path:
    """Redraw a run's figure from its metrics files (``python -m training plot RUN_DIR``)."""
    exp = get(RunRecord.read(run_dir).experiment)
    if exp.plot is None:
        raise ValueError(f"{run_dir}: {exp.name} draws no figure from its metrics")
    return exp.plot(run_dir)


def replot_summary(run_dir: str | Path) -> Path | None:
    """Recompute the claims of a run's summary.md where its experiment can; None otherwise."""
    exp = get(RunRecord.read(run_dir).experiment)
    return exp.summary(run_dir) if exp.summary else None


def studies_epilog() -> str:
    """The help's lines for experiments another package runs (they need the exported file)."""
    return "\n".join(f"  {e.name}: python -m {e.module} {e.name} --help  ({e.help})"
                     for e in EXPERIMENTS.values() if e.module != "training")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """One subcommand per experiment this package runs."""
    for e in EXPERIMENTS.values():
        if e.module != "training":
            continue
        if e.tool is not None:
            e.tool.add_arguments(sub.add_parser(e.name, help=e.help, description=e.tool.__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
        else:
            add_config_args(sub.add_parser(e.name, help=e.help, description=e.help), e.config, e.presets)

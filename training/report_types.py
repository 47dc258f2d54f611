"""The report's types, shared by the report (``training.report``) and every experiment's
section builder: a leaf module (it imports no experiment), so the builders and the report can
both import it without a cycle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .records import RunRecord
from .verdicts import DIFFERS, INCONCLUSIVE, PASS

__all__ = ["DIFFERS", "INCONCLUSIVE", "PASS", "Claim", "Question", "QuestionBuilder", "RunInfo", "Section",
           "SectionBuilder"]


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims, checked against our numbers."""

    statement: str  # the claim, in the paper's terms
    paper: str  # what the paper reports or states
    ours: str  # what we measured
    passed: bool | None  # None: INCONCLUSIVE (training/verdicts.py: the effect is within the seed spread)

    @property
    def verdict(self) -> str:
        return INCONCLUSIVE if self.passed is None else PASS if self.passed else DIFFERS


@dataclass(frozen=True)
class RunInfo:
    """Where a section's numbers come from: read from the run's ``config.json``."""

    run_dir: Path
    experiment: str
    preset: str | None
    dataset: str | None
    seeds: list[int]
    git_revision: str
    started_at: str
    machine: str

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        run_dir = Path(run_dir)
        record = RunRecord.read(run_dir)
        env = record.environment
        machine = ", ".join(str(x) for x in (
            env.get("gpu") or f"CPU ({env.get('cpu_count', '?')} cores, {env.get('torch_threads', '?')} torch threads)",
            env.get("platform"), f"torch {env.get('torch')}" if env.get("torch") else None) if x)
        return cls(run_dir=run_dir, experiment=record.experiment, preset=record.preset,
                   dataset=record.config.get("dataset"), seeds=list(record.seeds),
                   git_revision=record.git_revision, started_at=record.started_at, machine=machine)

    def provenance(self) -> str:
        seeds = f"{len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''} ({', '.join(map(str, self.seeds))})" \
            if self.seeds else "seed not recorded"
        return (f"Run `{self.run_dir.name}`: preset **{self.preset or 'defaults'}**, dataset "
                f"**{self.dataset or 'n/a'}**, {seeds}; {self.machine}; started {self.started_at}; "
                f"git {self.git_revision}.")


@dataclass(frozen=True)
class Section:
    """One figure (or one experiment) of the report."""

    key: str  # the experiment's name, e.g. "ioffe-fig1"
    title: str
    context: str
    plotted: str
    observed: list[str]  # bullet points with our numbers
    interpretation: str
    claims: list[Claim]
    figures: list[Path]  # PNG files inside the run directory
    run: RunInfo


@dataclass(frozen=True)
class Question:
    """A conceptual question answered with this repository's own measurements."""

    title: str
    answer: str
    evidence: list[str] = field(default_factory=list)


SectionBuilder = Callable[[Path], Section]
QuestionBuilder = Callable[[dict[str, list[Path]]], Question | None]

"""Several seeds of one experiment: the seed list, and the statistics every summary, claim check
and figure reports over them.

Metrics schema (every experiment): each metrics row that belongs to one seed carries ``"seed": int``.
A run with ``--seeds N`` trains seeds ``seed, seed+1, ..., seed+N-1``; ``config.json`` records
the list. Everything here is pure (no torch, no matplotlib import), so summaries and the report
can be regenerated from metrics files alone.

The band drawn around a mean curve is min-max over seeds (``BAND``): with 3-5 seeds, +-1 std
hides nothing that min-max shows, and min-max says plainly "every seed lies in here".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

BAND = "min-max over seeds"

# seed -> step -> value
SeedSeries = Mapping[int, Mapping[int, float]]


def seed_list(first: int, n: int) -> list[int]:
    """The seeds of a run: ``first, first+1, ..., first+n-1``."""
    if n < 1:
        raise ValueError(f"--seeds must be at least 1 (got {n})")
    return list(range(first, first + n))


@dataclass(frozen=True)
class Stats:
    """Mean, (sample) standard deviation, min and max of one quantity over seeds."""

    n: int
    mean: float
    std: float  # sample std (ddof=1); 0.0 for one seed
    min: float
    max: float

    def fmt(self, digits: int = 4) -> str:
        """``0.9810 +- 0.0012`` (``0.9810`` for one seed)."""
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} +- {self.std:.{digits}f}"


def stats(values: Iterable[float]) -> Stats:
    v = [float(x) for x in values]
    if not v:
        raise ValueError("no values to summarise")
    n = len(v)
    mean = math.fsum(v) / n
    var = math.fsum((x - mean) ** 2 for x in v) / (n - 1) if n > 1 else 0.0
    return Stats(n=n, mean=mean, std=math.sqrt(var), min=min(v), max=max(v))


def by_seed(rows: Iterable[Mapping], key: str, where: Callable[[Mapping], bool] | None = None,
            default_seed: int = 0) -> dict[int, dict[int, float]]:
    """Metrics rows -> ``{seed: {step: row[key]}}`` for rows that have ``key`` (and match
    ``where``). Rows without ``"seed"`` (single-seed runs written before seeds existed) count as
    ``default_seed``."""
    out: dict[int, dict[int, float]] = {}
    for r in rows:
        if key not in r or r[key] is None or (where is not None and not where(r)):
            continue
        out.setdefault(int(r.get("seed", default_seed)), {})[int(r["step"])] = float(r[key])
    return out


def common_steps(series: SeedSeries) -> list[int]:
    """Steps present in every seed's series, ascending."""
    if not series:
        return []
    steps = set.intersection(*(set(s) for s in series.values()))
    return sorted(steps)


def at_step(series: SeedSeries, step: int) -> Stats:
    """Statistics over seeds of the value at ``step`` (every seed must have it)."""
    missing = [seed for seed, s in series.items() if step not in s]
    if missing:
        raise KeyError(f"step {step} missing for seeds {missing}")
    return stats(s[step] for s in series.values())


def curve(series: SeedSeries) -> dict[str, list[float]]:
    """Mean and band over seeds at every common step: ``{"step", "mean", "std", "min", "max"}``,
    the columns a figure draws (mean line, band) from."""
    steps = common_steps(series)
    cols: dict[str, list[float]] = {"step": [], "mean": [], "std": [], "min": [], "max": []}
    for step in steps:
        st = at_step(series, step)
        cols["step"].append(step)
        cols["mean"].append(st.mean)
        cols["std"].append(st.std)
        cols["min"].append(st.min)
        cols["max"].append(st.max)
    return cols


@dataclass(frozen=True)
class Ahead:
    """How many seeds of ``a`` beat the same seed of ``b`` at one step (paired by seed)."""

    k: int
    n: int

    @property
    def all(self) -> bool:
        return self.n > 0 and self.k == self.n

    def fmt(self) -> str:
        return f"{self.k} of {self.n} seeds"


def ahead(a: SeedSeries, b: SeedSeries, step: int, higher_is_better: bool = True) -> Ahead:
    """Paired comparison at ``step``: seeds present in both ``a`` and ``b`` where ``a`` is strictly
    better. Seeds are paired because the same seed gives both variants the same batch order."""
    seeds = sorted(set(a) & set(b))
    k = 0
    for seed in seeds:
        x, y = a[seed][step], b[seed][step]
        k += (x > y) if higher_is_better else (x < y)
    return Ahead(k=k, n=len(seeds))


def plot_mean_band(ax, series: SeedSeries, label: str, color=None, x_scale: float = 1.0, **line_kw):
    """Mean over seeds as a line and the min-max band (``BAND``) around it on a matplotlib axes;
    one seed draws the line alone. Returns the line."""
    c = curve(series)
    xs = [s * x_scale for s in c["step"]]
    n = len(series)
    (line,) = ax.plot(xs, c["mean"], label=label if n == 1 else f"{label} (mean of {n})",
                      color=color, **line_kw)
    if n > 1:
        ax.fill_between(xs, c["min"], c["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def fmt_table_row(name: str, series: SeedSeries, steps: Sequence[int], digits: int = 4) -> str:
    """``| name | mean +- std | ... |`` at ``steps`` (a Markdown table row)."""
    cells = []
    for s in steps:
        try:
            cells.append(at_step(series, s).fmt(digits))
        except KeyError:
            cells.append("n/a")
    return f"| {name} | " + " | ".join(cells) + " |"

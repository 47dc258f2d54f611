"""training/seeds.py: statistics over seeds, checked against values computed by hand."""

import math

import pytest

from training.seeds import (
    Ahead,
    ahead,
    at_step,
    by_seed,
    common_steps,
    curve,
    fmt_table_row,
    seed_list,
    stats,
)


def test_seed_list():
    assert seed_list(0, 1) == [0]
    assert seed_list(3, 4) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="--seeds"):
        seed_list(0, 0)


def test_stats_closed_form():
    s = stats([1.0, 2.0, 3.0, 6.0])
    assert s.n == 4 and s.mean == 3.0 and s.min == 1.0 and s.max == 6.0
    assert s.std == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 3))  # sample std, ddof=1
    assert stats([0.5]).std == 0.0 and stats([0.5]).fmt() == "0.5000"
    assert stats([0.1, 0.3]).fmt(2) == "0.20 +- 0.14"
    with pytest.raises(ValueError):
        stats([])


def test_by_seed_groups_rows_and_filters():
    rows = [
        {"seed": 0, "step": 0, "acc": 0.1, "variant": "bn"},
        {"seed": 0, "step": 10, "acc": 0.5, "variant": "bn"},
        {"seed": 1, "step": 10, "acc": 0.7, "variant": "bn"},
        {"seed": 1, "step": 10, "acc": 0.2, "variant": "standard"},
        {"seed": 1, "step": 20, "loss": 1.0, "variant": "bn"},  # no "acc": ignored
        {"step": 30, "acc": 0.9, "variant": "bn"},  # no seed: default_seed
    ]
    got = by_seed(rows, "acc", where=lambda r: r["variant"] == "bn")
    assert got == {0: {0: 0.1, 10: 0.5, 30: 0.9}, 1: {10: 0.7}}
    assert common_steps(got) == [10]


def test_curve_and_at_step():
    series = {0: {0: 0.0, 10: 0.4}, 1: {0: 0.2, 10: 0.8}, 2: {10: 0.6}}
    c = curve(series)
    assert c["step"] == [10]
    assert c["mean"] == [pytest.approx(0.6)] and c["min"] == [0.4] and c["max"] == [0.8]
    assert c["std"] == [pytest.approx(0.2)]
    with pytest.raises(KeyError, match="step 0 missing for seeds"):
        at_step(series, 0)


def test_ahead_is_paired_by_seed():
    bn = {0: {5: 0.9}, 1: {5: 0.8}, 2: {5: 0.7}}
    std = {0: {5: 0.85}, 1: {5: 0.85}, 2: {5: 0.6}, 3: {5: 0.0}}  # seed 3 has no partner
    a = ahead(bn, std, 5)
    assert a == Ahead(k=2, n=3) and not a.all and a.fmt() == "2 of 3 seeds"
    # For a loss, lower is better.
    assert ahead({0: {1: 1.0}}, {0: {1: 2.0}}, 1, higher_is_better=False).all
    assert not ahead({0: {1: 1.0}}, {0: {1: 1.0}}, 1).all  # a tie is not "ahead"


def test_fmt_table_row():
    series = {0: {1: 0.5}, 1: {1: 0.7}}
    assert fmt_table_row("bn", series, [1, 2], digits=1) == "| bn | 0.6 +- 0.1 | n/a |"


def test_plot_mean_band_draws_band_only_for_several_seeds():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.seeds import plot_mean_band
    fig, ax = plt.subplots()
    plot_mean_band(ax, {0: {0: 0.1, 1: 0.2}}, "one")
    assert len(ax.collections) == 0
    line = plot_mean_band(ax, {0: {0: 0.1, 1: 0.2}, 1: {0: 0.3, 1: 0.4}}, "two")
    assert len(ax.collections) == 1 and line.get_label() == "two (mean of 2)"
    assert list(line.get_ydata()) == pytest.approx([0.2, 0.3])
    plt.close(fig)

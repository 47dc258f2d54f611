"""The benchmark helpers' arithmetic (the benchmarks themselves print numbers; no test times them)."""

from __future__ import annotations

from benchmarks.common import markdown_table, percentile, time_calls
from benchmarks.serving_http import batch_stats


def test_percentile_interpolates():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == 9.9
    assert percentile([5.0], 1) == 5.0


def test_time_calls_counts_and_stops():
    calls = []
    assert len(time_calls(lambda: calls.append(1), warmup=2, iters=5)) == 5
    assert len(calls) == 7
    assert len(time_calls(lambda: None, warmup=0)) == 1  # neither bound: one call
    assert len(time_calls(lambda: None, warmup=0, min_seconds=0.01)) >= 1  # time bound alone ends


def test_batch_stats_reads_our_histogram_only():
    text = "\n".join([
        "# HELP bnserve_batch_size Images per ONNX Runtime run",
        'bnserve_batch_size_bucket{le="1.0"} 3.0',
        "bnserve_batch_size_sum 12.0",
        "bnserve_batch_size_count 4.0",
        'bentoml_service_adaptive_batch_size_sum{method_name="predict"} 99.0',
    ])
    assert batch_stats(text) == (12.0, 4.0)


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 2.5]]) == "| a | b |\n|---|---|\n| 1 | 2.5 |"

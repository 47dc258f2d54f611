"""The benchmark helpers' arithmetic (the benchmarks themselves print numbers; no test times them)."""

from __future__ import annotations

import pytest

from benchmarks.common import markdown_table, percentile, time_calls
from benchmarks.http_harness import batch_stats
from benchmarks.training import floor_ratio


def test_percentile_interpolates():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == 9.9
    assert percentile([5.0], 1) == 5.0


def test_floor_ratio_adds_only_the_seeds_matmuls():
    # a 0.75 ms one-seed step with 0.25 ms of matmuls; 5 seeds' matmuls 1.15 ms: 1.65 / 0.75
    assert floor_ratio(0.75, 0.25, 1.15) == pytest.approx(2.2)
    assert floor_ratio(1.0, 0.2, 0.2) == 1.0  # matmuls that do not grow: no floor above 1


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


def test_targets_are_checked_against_the_runs_own_numbers():
    from benchmarks.targets import (
        FULL_VGG_INFERENCE,
        FULL_VGG_SERVING,
        ORT_SERVED,
        OURS,
        check,
        render,
    )

    def serving(c1_p50, rps, naive_rps, errors, p99):
        rows = [{"model": FULL_VGG_SERVING, "service": OURS, "concurrency": 1, "p50_ms": c1_p50},
                {"model": FULL_VGG_SERVING, "service": OURS, "concurrency": 32, "rps": rps,
                 "ok": 100, "errors": errors, "p99_ms": p99},
                {"model": FULL_VGG_SERVING, "service": "naive (PyTorch eager)", "concurrency": 32,
                 "rps": naive_rps}]
        return {"results": rows, "inprocess_p50_ms": {FULL_VGG_SERVING: 1.5}}

    inference = {"results": [{"model": FULL_VGG_INFERENCE, "path": ORT_SERVED, "p50_ms": 1.5,
                              "latency_ratio": 0.44}]}
    training = {"results": [{"case": "Ioffe MLP 3x100 + BN", "ours": 1200.0},
                            {"case": "Ioffe MLP 3x100, no BN", "ours": 999.0}]}
    met = [ok for _, _, ok in check({"inference": inference, "training": training,
                                      "serving": serving(2.9, 500, 100, 0, 80)})]
    assert met == [False, True, True, True, True, False]
    met = [ok for _, _, ok in check({"serving": serving(3.1, 150, 100, 1, 150)})]
    assert met == [False, False, False, False]
    assert "**missed**" in render({"inference": inference}) and render({}) == ""


def test_one_suite_rewrites_its_section_and_its_target_rows_only():
    from benchmarks.__main__ import merge_page

    old = ("# B\n\npre\n\n## Targets\n\n| target | m |  |\n|---|---|---|\n| A | 1 | met |\n| S | 2 | met |\n\n"
           "## Inference\n\ninf\n\n## Serving\n\nold serving\n")
    new = ("# B\n\nnew pre\n\n## Targets\n\n| target | m |  |\n|---|---|---|\n| S | 3 | met |\n| P | 4 | met |\n\n"
           "## Serving\n\nnew serving\n")
    page = merge_page(old, new, ["Serving"])
    assert "| A | 1 | met |" in page and "| S | 3 | met |" in page and "| P | 4 | met |" in page
    assert "| S | 2 |" not in page and "inf" in page and "new serving" in page and "old serving" not in page


def test_the_bare_floor_peer_answers_with_the_services_preprocessing():
    """The peers' floor app must answer what the service answers (a photo converted the
    dataset's way too), or its row in docs/BENCHMARKS.md measures errors."""
    from pathlib import Path

    from starlette.testclient import TestClient

    from benchmarks.peers import bare_app

    samples = Path(__file__).resolve().parent.parent / "samples"
    with TestClient(bare_app()) as client:
        for name, label in (("fmnist-test-0009-sneaker.png", "Sneaker"),
                            ("fmnist-test-0000-ankle-boot-shop-photo.jpg", "Ankle boot")):
            r = client.post("/classify", files={"image": (samples / name).read_bytes()})
            assert r.status_code == 200 and r.json()["label"] == label
        assert client.post("/classify", files={"image": ("x.txt", b"hello", "text/plain")}).status_code == 415


def test_open_loop_client_counts_every_answer_reuses_connections_and_records_its_lag():
    """The open-loop client against a stand-in server on 127.0.0.1 that answers 200 and 503
    (with Retry-After and a JSON body) in turn, in pieces, and closes one connection: every
    request gets its fate, and each entry carries its send lag. No time is asserted."""
    import asyncio

    from benchmarks.http_harness import lag_summary, open_loop, summary

    async def main():
        served = [0]
        connections = [0]

        async def handle(reader, writer):
            connections[0] += 1
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                served[0] += 1
                if served[0] % 2:
                    body, extra = b'{"label": "x"}', b""
                else:
                    body, extra = b'{"error": "overloaded"}', b"Retry-After: 1\r\n"
                close = served[0] == 3
                answer = (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (200 if served[0] % 2 else 503, len(body))
                          + extra + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)
                writer.write(answer[:10])  # in two pieces: the client must wait for the rest
                await writer.drain()
                writer.write(answer[10:])
                await writer.drain()
                if close:
                    writer.close()
                    return

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            log, offered = await open_loop(f"http://127.0.0.1:{port}", b"IMG", rate=40, seconds=0.5)
        return log, offered, connections[0]

    log, offered, connections = asyncio.run(main())
    s = summary(log)
    assert len(log) == 20 and s["kinds"] == {"ok": 10, "shed": 10} and s["shed_without_retry_after_or_json"] == 0
    assert offered > 0 and connections >= 2  # the one the server closed was replaced
    assert all(entry[4] is not None and entry[4] >= 0 for entry in log)
    lag = lag_summary(log)
    assert lag["send_lag_max_ms"] >= lag["send_lag_p99_ms"] >= lag["send_lag_p50_ms"] >= 0

"""The benchmark commands run end to end on small sizes and report what the issues ask for.

Speed is not asserted here (that is what the benchmarks print, compared within one run); these tests keep the
commands working and check their bookkeeping: every key the issues name is present and nothing is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.postgres]


def _bench(*args: str, dsn: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", *args, "--json"],
        capture_output=True, text=True, timeout=240, check=True,
        env={**os.environ, "PATROLGATE_DATABASE__DSN": dsn},
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_bench_mavlink_reports_the_issue_figures(db: str) -> None:
    r = _bench("mavlink", "--frames", "6000", "--drones", "5", "--runs", "2", dsn=db)
    for key in ("e2e_frames_per_s", "decode_ceiling_frames_per_s", "ratio", "lost"):
        assert key in r
    assert r["lost"] == 0 and 5900 <= r["frames"] <= 6000  # type: ignore[operator]
    # every position after each drone's first heartbeat is committed, in every run
    expected = int(r["positions_sent"]) - 5  # type: ignore[call-overload]
    assert r["samples_committed_per_run"] == [expected, expected]


@pytest.mark.mqtt
def test_bench_mqtt_reports_the_issue_figures(db: str) -> None:
    r = _bench("mqtt", "--cars", "50", "--messages", "1500", "--batch", "3", dsn=db)
    for key in ("e2e_msgs_per_s", "e2e_samples_per_s", "ceiling_msgs_per_s", "ratio", "lost"):
        assert key in r
    assert r["lost"] == 0 and r["samples_committed"] == 4500 and r["rejected"] == {}
    assert r["validation_rejected"] == {}
    sustained = r["sustained_samples_per_s"]  # None when the run was too short for commits past 10 % and 90 %
    assert sustained is None or sustained > 0


@pytest.mark.mqtt
def test_bench_mqtt_with_two_gateway_processes_on_one_shared_subscription(db: str) -> None:
    r = _bench("mqtt", "--cars", "50", "--messages", "1500", "--batch", "3", "--gateways", "2", dsn=db)
    assert r["gateways"] == 2 and r["lost"] == 0 and r["samples_committed"] == 4500
    shares = r["per_gateway_samples"]
    assert sum(shares) == 4500 and min(shares) > 0, shares  # type: ignore[arg-type, call-overload]
    assert r["e2e_samples_per_s"] and r["writer_batches"]


@pytest.mark.mqtt
def test_bench_mqtt_with_ingest_worker_processes(db: str) -> None:
    r = _bench("mqtt", "--cars", "50", "--messages", "1500", "--batch", "3", "--ingest-workers", "2", dsn=db)
    assert r["ingest_workers"] == 2 and r["lost"] == 0 and r["samples_committed"] == 4500
    assert r["rejected"] == {} and r["validation_rejected"] == {}
    assert r["start_s"] > 0 and r["elapsed_s"] > 0  # type: ignore[operator]
    assert r["writer_batches"] >= 2  # type: ignore[operator]  # one writer per worker, at least a batch each


def test_sustained_rate_is_the_commit_rate_between_10_and_90_percent() -> None:
    from gateway.bench.mqtt import _sustained_rate

    # 1,000 samples: 50 committed at t=1 s (the start), 100 per second from t=2, the drain at the end.
    progress = [(1.0, 50)] + [(2.0 + i, 100 + 100 * i) for i in range(10)] + [(20.0, 1000)]
    assert _sustained_rate(progress, 1000) == (900 - 100) / (10.0 - 2.0)
    assert _sustained_rate([(1.0, 1000)], 1000) is None  # one commit: no rate


def test_bench_ingest_reports_the_ratio_to_psql_copy(db: str) -> None:
    r = _bench("ingest", "--rows", "20000", "--batch-rows", "5000", dsn=db)
    assert r["stored"] == 20000 and r["rows_per_s"] and r["ceiling_rows_per_s"] and r["ratio"]

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import query
from pymavlink import mavutil

from gateway.config import load_settings
from gateway.replay import replay_tlog

pytestmark = pytest.mark.postgres


def _pymavlink_positions(path: Path) -> list[tuple[float, int, int]]:
    conn = mavutil.mavlink_connection(str(path), robust_parsing=True)
    out = []
    while (msg := conn.recv_match(type="GLOBAL_POSITION_INT")) is not None:
        out.append((msg._timestamp, msg.lat, msg.lon))
    conn.close()
    return out


def test_replay_stores_every_position_of_the_real_flight_log(shared_dir: Path, db: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    tlog = shared_dir / "data" / "tlogs" / "arducopter_2015_flight.tlog"
    expected = _pymavlink_positions(tlog)
    monkeypatch.setenv("PATROLGATE_DATABASE__DSN", db)
    monkeypatch.setenv("PATROLGATE_WRITER__SPOOL_DIR", str(tmp_path / "spool"))
    figures = asyncio.run(replay_tlog(load_settings(), tlog))
    assert figures["positions"] == len(expected) == figures["stored"]
    assert figures["vehicles"] == ["drone-1"]
    [(count, first, last)] = query(db, "SELECT count(*), min(received_at), max(received_at) FROM telemetry")
    assert count == len(expected)
    # Stored with the recorded receive times: the 2015 flight, not today.
    assert abs(first.timestamp() - expected[0][0]) < 1e-3 and abs(last.timestamp() - expected[-1][0]) < 1e-3
    with_fix = [(round(lat / 1e7, 7), round(lon / 1e7, 7)) for _, lat, lon in expected if lat or lon]
    stored = [(round(a, 7), round(b, 7)) for a, b in
              query(db, "SELECT lat, lon FROM telemetry WHERE lat IS NOT NULL ORDER BY received_at")]
    assert stored == with_fix
    # Positions before the GPS fix (0/0) are kept as samples without a position.
    assert query(db, "SELECT count(*) FROM telemetry WHERE lat IS NULL") == [(len(expected) - len(with_fix),)]
    # The log's corrupt stretches are counted and kept aside.
    assert figures["bad_crc"] > 0
    assert query(db, "SELECT count(*) FROM rejected WHERE reason = 'corrupt_log_bytes'") == [(1,)]
    assert query(db, "SELECT count(*) FROM events WHERE type = 'online'") == [(1,)]

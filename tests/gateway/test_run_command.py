"""The README's first command: `patrolgate run` on a machine with nothing configured."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson


def test_patrolgate_run_with_nothing_configured_serves_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATROLGATE_")}
    env.update({"PATROLGATE_API__PORT": "0", "PATROLGATE_MAVLINK__ENDPOINTS": '["udpin:127.0.0.1:0"]',
                "PATROLGATE_WRITER__SPOOL_DIR": str(tmp_path / "spool")})
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["patrolgate", "run"], env=env, stdout=fh, stderr=fh, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"API listening on (http://\S+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        base = m.group(1)
        with urllib.request.urlopen(f"{base}/api/v1/health", timeout=5) as resp:
            assert orjson.loads(resp.read()) == {"status": "ok", "database": True}
        text = log.read_text()
        assert "embedded PostgreSQL" in text and "embedded mosquitto" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    assert "writer flushed" in log.read_text()

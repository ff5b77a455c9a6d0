"""The spool's folder lock: one owner at a time, released however the owner ends."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import writer_settings

from telemetry.spool import Spool, SpoolInUseError
from telemetry.writer import Batch, TelemetryWriter


def test_a_lock_held_by_a_killed_process_is_free_again(tmp_path: Path) -> None:
    probe = ("import sys, time; from telemetry.spool import Spool; s = Spool(sys.argv[1]); print('locked', flush=True);"
             " time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", probe, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(SpoolInUseError, match=f"pid {proc.pid}"):
            Spool(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with Spool(tmp_path):  # the kernel released the flock with the process
        assert (tmp_path / "spool.lock").read_text().strip() == str(os.getpid())


def test_a_spool_that_fails_to_open_or_is_dropped_leaves_the_folder_free(tmp_path: Path) -> None:
    (tmp_path / "spool-000000000001.seg").mkdir()  # unreadable as a segment
    with pytest.raises(IsADirectoryError):
        Spool(tmp_path)
    (tmp_path / "spool-000000000001.seg").rmdir()
    dropped = Spool(tmp_path)
    del dropped
    gc.collect()
    Spool(tmp_path).close()


def test_a_file_that_is_not_a_segment_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Spool(tmp_path) as spool:
        spool.append(Batch().encode())
    (tmp_path / "spool-copy.seg").write_bytes(b"an operator's copy")
    with Spool(tmp_path) as spool:
        assert spool.pending == 1
    assert "ignoring spool-copy.seg" in caplog.text


async def test_a_cancelled_writer_start_releases_the_spool(tmp_path: Path) -> None:
    writer = TelemetryWriter("postgresql://127.0.0.1:1/nothing", writer_settings(tmp_path))
    writer._store.connect = lambda: time.sleep(0.5)  # type: ignore[method-assign]  # a database slow to answer
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.start(), 0.1)
    Spool(tmp_path / "spool").close()

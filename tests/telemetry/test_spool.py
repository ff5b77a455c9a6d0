"""The spool's folder lock: one owner at a time, released however the owner ends."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
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
    with pytest.raises(IsADirectoryError) as failed:
        Spool(tmp_path)
    (tmp_path / "spool-000000000001.seg").rmdir()
    Spool(tmp_path).close()  # free while ``failed`` still holds the half-made spool (through its traceback)
    del failed
    dropped = Spool(tmp_path)
    del dropped
    gc.collect()
    Spool(tmp_path).close()


def test_files_not_named_as_this_spool_names_its_segments_are_ignored(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A copy named otherwise was counted but never read (or, beside the original, read twice): the writer
    then spun on a spool that never drained, or failed at its next append."""
    with Spool(tmp_path) as spool:
        spool.append(Batch().encode())
    original = tmp_path / "spool-000000000001.seg"
    for name in ("spool-copy.seg", "spool-1.seg", "spool-01.seg"):
        (tmp_path / name).write_bytes(original.read_bytes())
    with Spool(tmp_path) as spool:
        assert spool.pending == 1
        record = spool.peek()
        assert record is not None
        spool.ack(record)
        assert spool.pending == 0 and spool.peek() is None
        spool.append(Batch().encode())
        assert spool.pending == 1
    for name in ("spool-copy.seg", "spool-1.seg", "spool-01.seg"):
        assert f"ignoring {name}" in caplog.text


@pytest.mark.postgres
async def test_a_cancelled_writer_start_releases_the_spool_and_the_connection(db: str, tmp_path: Path) -> None:
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    store = writer._store
    connect = store.connect

    made = threading.Event()

    def slow_connect() -> None:  # a database slow to answer: the connection is made after the start gave up
        time.sleep(0.4)
        connect()
        made.set()

    store.connect = slow_connect  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.start(), 0.1)
    Spool(tmp_path / "spool").close()
    assert await asyncio.to_thread(made.wait, 10)
    for _ in range(100):  # then the loop's turn for the callback that closes it
        if store.conn is None:
            break
        await asyncio.sleep(0.05)
    assert store.conn is None

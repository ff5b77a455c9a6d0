"""`patrolgate replay FILE.tlog`: a recorded MAVLink log through the same driver and pipeline as live data.

Frames keep their recorded receive times (the tlog's timestamps), so the stored track is the flight as it
happened. Corrupt stretches are counted and kept in ``rejected`` like bad input on a live link.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from drivers.mavlink import DroneConfig, FrameSplitter, MavlinkDriver, MavlinkOptions, read_tlog
from gateway.config import GatewaySettings
from gateway.embedded import EmbeddedPostgres
from gateway.pipeline import Pipeline
from gateway.runtime import tune_gc_for_ingest
from gateway.service import storage_settings, validation_limits, writer_settings
from telemetry import storage
from telemetry.model import Rejection, utc_from_unix, utcnow
from telemetry.validation import Validator
from telemetry.writer import TelemetryWriter

__all__ = ["replay_tlog"]


async def replay_tlog(settings: GatewaySettings, path: Path, names: dict[int, str] | None = None) -> dict[str, Any]:
    """Ingest ``path``; returns counts (frames, samples stored, rejected by reason, elapsed seconds)."""
    tune_gc_for_ingest()
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database.dsn
    if dsn is None:
        embedded = EmbeddedPostgres().start()
        dsn = embedded.dsn
    try:
        storage.upgrade(dsn, storage_settings(settings))
        writer = TelemetryWriter(dsn, writer_settings(settings))
        await writer.start()
        pipeline = Pipeline(writer, Validator(validation_limits(settings)))
        drones = {sysid: DroneConfig(vehicle) for sysid, vehicle in (names or {}).items()}
        driver = MavlinkDriver(MavlinkOptions(endpoints=[], drones=drones))
        await driver.start(pipeline)
        source = f"replay:{path.name}"
        splitter = FrameSplitter()
        started = time.perf_counter()
        for count, (t, frame) in enumerate(read_tlog(path, splitter), 1):
            driver.process(frame, utc_from_unix(t), link=source)
            if count % 5000 == 0:
                await driver._flush()
        junk = splitter.stats
        if junk.junk_bytes:
            await pipeline(rejections=[Rejection(utcnow(), source, "corrupt_log_bytes",
                                                 f"bad_crc={junk.bad_crc} unknown_id={junk.unknown_id} "
                                                 f"junk_bytes={junk.junk_bytes}")])
        await driver.stop()
        await writer.stop()
        return {
            "file": str(path),
            "frames": driver.frames_total,
            "positions": driver.samples_total,
            "stored": writer.stats.written,
            "rejected": dict(pipeline.validator.rejected),
            "bad_crc": junk.bad_crc,
            "junk_bytes": junk.junk_bytes,
            "vehicles": driver.vehicles(),
            "elapsed_s": round(time.perf_counter() - started, 2),
            "database": "embedded (discarded on exit)" if embedded else "configured",
        }
    finally:
        if embedded is not None:
            embedded.stop()

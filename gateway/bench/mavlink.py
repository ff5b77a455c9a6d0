"""`patrolgate bench mavlink`: end-to-end MAVLink frames/s against pymavlink's bare parse rate, same run.

A realistic mix from many drones (HEARTBEAT 1 Hz, GLOBAL_POSITION_INT 10 Hz, ATTITUDE 10 Hz, SYS_STATUS 1 Hz,
GPS_RAW_INT 5 Hz, VFR_HUD 4 Hz, BATTERY_STATUS 1 Hz; MAVLink 2, one frame per datagram) is sent over UDP
loopback by a separate process into the running pipeline (MavlinkDriver -> validation -> writer -> a real
database). The clock runs from the first datagram sent to the commit of the last sample. The sender keeps at
most ``window`` frames ahead of what the gateway has received, like a link with flow control, so the figure is
the pipeline's capacity and ``lost`` counts real drops, not a sender flooding the kernel's socket buffer.

The ceiling is pymavlink parsing the same datagrams in one loop (``parse_char`` or ``parse_buffer``, whichever
is faster, best of two), measured in this process before and after the runs; the higher counts. The end-to-end
figure is likewise the best of ``runs`` runs (default 3), each from a fresh pipeline into the same database: the
best of each side, so the ratio does not swing with what else the machine does during one 2-second run. Every
run's rate, the median run's ratio and every run's committed count are reported too; ``lost`` is the worst run's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from typing import Any

from drivers.mavlink import MavlinkDriver, MavlinkOptions
from gateway.bench import database
from gateway.bench.mavlink_decode import RATES_HZ, build_mix, fast_path_rate, pymavlink_ceiling
from gateway.pipeline import Pipeline
from gateway.runtime import tune_gc_for_ingest
from telemetry import storage
from telemetry.writer import TelemetryWriter, WriterSettings

__all__ = ["run_mavlink_bench"]


def _sender(datagrams: list[bytes], port: int, received: Any, start: Any, window: int) -> None:
    """Child process: send every datagram, never more than ``window`` ahead of the receiver."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    # Connected: the kernel resolves the route once, not per datagram (the gateway sees the same source address).
    sock.connect(("127.0.0.1", port))
    send = sock.send
    total = len(datagrams)
    start.value = time.time()
    i = 0
    while i < total:
        limit = min(total, received.value + window)
        if i >= limit:
            time.sleep(0.0002)
            continue
        while i < limit:
            send(datagrams[i])
            i += 1
    sock.close()




async def _e2e(dsn: str, datagrams: list[bytes], window: int) -> dict[str, Any]:
    tune_gc_for_ingest()  # as the gateway does at start
    writer = TelemetryWriter(dsn, WriterSettings(batch_rows=20_000, flush_interval_s=0.2))
    await writer.start()
    pipeline = Pipeline(writer)
    driver = MavlinkDriver(MavlinkOptions(endpoints=["udpin:127.0.0.1:0"], message_rates_hz={}))
    await driver.start(pipeline)
    port = driver.local_address()[1]
    ctx = multiprocessing.get_context("spawn")
    received = ctx.Value("q", 0, lock=False)
    start = ctx.Value("d", 0.0, lock=False)
    proc = ctx.Process(target=_sender, args=(datagrams, port, received, start, window), daemon=True)
    proc.start()
    total = len(datagrams)
    idle_since = time.monotonic()
    last = 0
    while True:
        await asyncio.sleep(0.002)
        frames = driver.frames_total
        received.value = frames
        if frames >= total:
            break
        if frames != last:
            last, idle_since = frames, time.monotonic()
        elif time.monotonic() - idle_since > 3.0 and not proc.is_alive():
            break  # the sender finished and nothing more arrives: the rest was lost
    await driver.stop()  # flushes the driver's queue into the pipeline
    await writer.stop()  # commits everything queued at once (flush() would let the last batch age first)
    finished = time.time()
    proc.join(10)
    stats = driver.stats()
    elapsed = finished - start.value
    return {
        "received": driver.frames_total, "samples": driver.samples_total, "elapsed_s": elapsed,
        "written": writer.stats.written, "rejected": writer.stats.rejected, "links": stats["links"],
    }


def run_mavlink_bench(frames: int = 300_000, *, drones: int = 50, dsn: str | None = None,
                      window: int = 4_000, runs: int = 3) -> dict[str, Any]:
    """Run the benchmark; returns the figures (see the module docstring)."""
    per_drone_second = sum(RATES_HZ.values())
    seconds = max(1.0, frames / (drones * per_drone_second))
    datagrams = build_mix(drones, seconds)
    ceilings = [pymavlink_ceiling(datagrams[:100_000], repeat=2)]
    fast = fast_path_rate(datagrams[:100_000], repeat=2)
    results = []
    with database(dsn) as db:
        storage.upgrade(db)
        for _ in range(runs):
            results.append(asyncio.run(_e2e(db, datagrams, window)))
    ceilings.append(pymavlink_ceiling(datagrams[:100_000], repeat=2))  # before and after: a drifting load shows
    sent = len(datagrams)
    positions = sum(1 for d in datagrams if d[7] == 33 and d[8] == 0 and d[9] == 0)
    rates = [r["received"] / r["elapsed_s"] for r in results]
    best = max(range(runs), key=lambda i: rates[i])
    ceiling = max(ceilings)
    median = sorted(rates)[runs // 2]
    return {
        "frames": sent,
        "drones": drones,
        "e2e_frames_per_s": round(rates[best]),
        "decode_ceiling_frames_per_s": round(ceiling),
        "ratio": round(rates[best] / ceiling, 3),
        "lost": max(sent - r["received"] for r in results),
        "runs": runs,
        "e2e_runs_frames_per_s": [round(r) for r in rates],
        "ratio_median_run": round(median / ceiling, 3),
        "ceiling_before_after": [round(c) for c in ceilings],
        "positions_sent": positions,
        "samples_committed_per_run": [r["written"] for r in results],
        "fast_path_decode_frames_per_s": round(fast),
        "elapsed_s": round(results[best]["elapsed_s"], 3),
        "rejected": results[best]["rejected"],
    }

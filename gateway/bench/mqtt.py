"""`patrolgate bench mqtt`: end-to-end MQTT samples/s and messages/s against a bare paho subscriber, same run.

A fleet of ``cars`` patrol cars (contract v1 payloads of ~250 bytes, or arrays of ``batch`` samples) is
published at QoS 1 by a separate process into a real mosquitto. A single Python publisher is slower than a
subscriber (about 8 k msg/s here), so to measure the receiving side the stream is queued in the broker for a
persistent session (clean start off, subscribed beforehand) while the receiver is away, and the clock runs
from the receiver's (re)connect until the last message is in:

- ceiling: a bare paho subscriber (QoS 1, auto-ack, nothing else) draining the queued stream;
- transport: the gateway's own MQTT connection (``drivers/mqtt/transport.py``: buffered reads, lean PUBLISH
  decoding, batched PUBACKs) with a handler that only acknowledges: what receiving costs before the pipeline.
  It is faster than bare paho, so ``ratio`` can exceed 1; ``pipeline_ratio`` (figure / transport) is the
  share of the receive rate the decode-validate-store pipeline keeps;
- figure: the gateway (MQTT driver -> validation -> writer -> a real PostgreSQL, PUBACK only after commit), in
  a process of its own, draining the same stream, timed from its MQTT connection (the first moment a message can
  arrive, as the ceiling's clock starts at its connection) to the commit of the last sample. Its start before
  that (database connections, migrations check, ``ingest_workers`` processes: 0.1 s in one process, 0.25 s with
  two workers here) is ``start_s``, a constant reported beside the rate rather than inside it;
- ``sustained_samples_per_s``: the same run's commit rate between 10 % and 90 % of the samples committed, without
  the gateway's start and the drain of its queue after the last message (see ``_sustained_rate``);
- ``gateways`` > 1: the figure is that many gateway processes on one shared subscription (``$share/bench/...``),
  one database, timed from the first one's connection to the last commit; ``per_gateway_samples`` shows the
  broker's split;
- ``ingest_workers``: the gateway's ``[mqtt] ingest_workers`` (decode, validate and store in that many worker
  processes, ``gateway.ingest_pool``).

``lost`` = samples published - samples committed - samples rejected by validation (those are kept in
``rejected`` with their reason). Payloads the contract refuses are listed in ``rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt.client import MqttClient
from gateway.bench import database
from gateway.config import GatewaySettings, load_settings
from gateway.embedded import EmbeddedMosquitto
from gateway.service import Gateway

__all__ = ["make_stream", "run_mqtt_bench"]

_CENTRE = (31.2304, 121.4737)


def make_stream(cars: int, messages: int, batch: int, prefix: str, start_ms: int) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs: cars take turns, each moving along its own circle at ~8 m/s, 1 Hz fixes."""
    out: list[tuple[str, bytes]] = []
    per_car = math.ceil(messages / cars)
    for k in range(per_car):
        for car in range(cars):
            if len(out) >= messages:
                return out
            samples = []
            for j in range(batch):
                n = k * batch + j
                angle = car + n * 0.0008
                samples.append({
                    "v": 1, "ts": start_ms + n * 1000, "kind": "patrol_car", "seq": n,
                    "lat": round(_CENTRE[0] + 0.008 * math.sin(angle), 7),
                    "lon": round(_CENTRE[1] + 0.009 * math.cos(angle), 7), "alt_m": 4.2,
                    "speed_mps": 8.3, "heading_deg": round(math.degrees(angle) % 360, 1), "battery_pct": 76.5,
                    "battery_v": 48.1, "odometer_m": 1000.0 + n * 8.3, "mode": "patrol", "gps_fix": 3,
                    "satellites": 14, "rssi_dbm": -71,
                })
            payload = orjson.dumps(samples[0] if batch == 1 else samples)
            out.append((f"{prefix}/car-{car + 1:04d}/telemetry", payload))
    return out


def _publish(url_host: str, port: int, stream: list[tuple[str, bytes]], started: Any, done: Any) -> None:
    """Child process: publish the stream at QoS 1 with 1,000 messages in flight."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(url_host, port)
    client.loop_start()
    started.value = time.time()
    # paho's message ids are 16-bit: never more than 50,000 outstanding, or an id still queued comes round.
    infos = []
    for i, (topic, payload) in enumerate(stream):
        if i >= 50_000:
            infos[i - 50_000].wait_for_publish(60)
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos[-50_000:]:
        info.wait_for_publish(60)
    done.value = time.time()
    client.loop_stop()
    client.disconnect()


def _spawn_publisher(broker: EmbeddedMosquitto, stream: list[tuple[str, bytes]]) -> tuple[Any, Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    started, done = ctx.Value("d", 0.0, lock=False), ctx.Value("d", 0.0, lock=False)
    proc = ctx.Process(target=_publish, args=(broker.host, broker.port, stream, started, done), daemon=True)
    proc.start()
    return proc, started, done


def _queue_stream(broker: EmbeddedMosquitto, stream: list[tuple[str, bytes]]) -> float:
    """Publish the whole stream (from a separate process) while the receiver is away; returns msgs/s."""
    proc, started, done = _spawn_publisher(broker, stream)
    proc.join(600)
    if proc.exitcode != 0:
        raise RuntimeError(f"the bench publisher failed (exit code {proc.exitcode})")
    return len(stream) / (done.value - started.value)


def _bare_subscriber(broker: EmbeddedMosquitto, on_message: Any) -> mqtt.Client:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bare-subscriber",
                      protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect(broker.host, broker.port, clean_start=False, properties=props)
    return sub


def _ceiling(broker: EmbeddedMosquitto, stream: list[tuple[str, bytes]], prefix: str) -> tuple[float, float]:
    """Messages/s a bare paho subscriber (QoS 1, auto-ack) drains of the queued stream; and the publish rate."""
    total = len(stream)
    received = 0
    finished = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received >= total:
            finished.set()

    sub = _bare_subscriber(broker, on_message)
    sub.subscribe(f"{prefix}/+/telemetry", qos=1)
    sub.loop(1.0)
    sub.disconnect()
    publish_rate = _queue_stream(broker, stream)
    sub = _bare_subscriber(broker, on_message)
    started = time.time()
    sub.loop_start()
    finished.wait(300)
    elapsed = time.time() - started
    sub.loop_stop()
    sub.disconnect()
    if received < total:
        raise RuntimeError(f"the bare subscriber received {received} of {total} messages")
    return total / elapsed, publish_rate


async def _transport_only(broker: EmbeddedMosquitto, stream: list[tuple[str, bytes]], prefix: str) -> float:
    """Messages/s the gateway's MQTT connection drains of the queued stream when the handler only acks."""
    total = len(stream)
    mids: list[int] = []
    done = asyncio.Event()
    client: MqttClient | None = None

    def on_message(msg: Any) -> None:
        assert client is not None
        mids.append(msg.mid)
        last = client.stats["received"] >= total
        if len(mids) >= 200 or last:
            client.ack_many(mids)
            mids.clear()
        if last:
            done.set()

    client = MqttClient(broker.url, "bench-transport", on_message, max_inflight=5000)
    await client.start()
    await client.subscribe([f"{prefix}/+/telemetry"])
    await client.stop()
    await asyncio.to_thread(_queue_stream, broker, stream)
    client = MqttClient(broker.url, "bench-transport", on_message, max_inflight=5000)
    started = time.time()
    await client.start()
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.time() - started
    await client.stop()
    return total / elapsed


@contextlib.contextmanager
def _services(dsn: str | None) -> Iterator[tuple[str, EmbeddedMosquitto]]:
    # mosquitto's default autosave (30 min): saving the queued stream to disk every second stalled delivery.
    with EmbeddedMosquitto(autosave_interval_s=1800) as broker, database(dsn) as db:
        yield db, broker


def _gateway_settings(dsn: str, broker_url: str, prefix: str, client_id: str, spool: Path,
                      shared_group: str | None = None, ingest_workers: int = 0) -> GatewaySettings:
    return load_settings(
        database={"dsn": dsn}, api={"enabled": False}, mavlink={"endpoints": []},
        mqtt={"broker": broker_url, "prefix": prefix, "client_id": client_id, "max_inflight": 5000,
              "shared_group": shared_group, "ingest_workers": ingest_workers},
        writer={"spool_dir": str(spool)},
    )


async def _record_progress(gw: Gateway, record: Callable[[int, int, bool], None]) -> None:
    """Every 5 ms until cancelled: ``record(samples committed, samples received, MQTT connected)`` of ``gw``,
    from before its start."""
    while True:
        record(*gw.samples_counts(), _mqtt_connected(gw))
        await asyncio.sleep(0.005)


def _mqtt_connected(gw: Gateway) -> bool:
    return any(d.name == "mqtt" and d.stats()["client"].get("connects", 0) > 0 for d in gw.drivers)


def _gateway_process(index: int, settings: GatewaySettings, ready: Any, go: Any, stop: Any, written: Any,
                     received: Any, results: Any) -> None:
    """Child process of ``_e2e``: one gateway; its committed and received counts go to shared memory
    every 5 ms; when told to stop it flushes and reports the time of its MQTT connection and of its last commit,
    its writer's batches and its rejections. It ends by itself if the bench process is gone."""
    parent = os.getppid()

    async def until(event: Any, poll_s: float) -> None:
        while not event.is_set():
            if os.getppid() != parent:
                raise SystemExit("the bench process is gone")
            await asyncio.sleep(poll_s)

    async def serve() -> None:
        first = Gateway(settings)  # creates this member's persistent session and shared subscriptions
        await first.start()
        await first.stop()
        ready.release()
        await until(go, 0.001)
        gw = Gateway(settings)
        last_commit = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        connected_at: float | None = None

        def share(committed: int, taken: int, connected: bool = True) -> None:
            nonlocal last_commit, connected_at
            if connected_at is None and connected:
                connected_at = time.monotonic()
            if committed != written[index]:
                last_commit = time.monotonic()
            written[index], received[index] = committed, taken

        recorder = asyncio.create_task(_record_progress(gw, share))
        try:
            await gw.start()
            assert gw.pipeline is not None and gw.writer is not None
            await until(stop, 0.005)
            await gw.flush()
            share(*gw.samples_counts())
            status = gw.status()
            workers = status.get("ingest_workers", {})
            validation = dict(status["pipeline"]["rejected_by_reason"])
            for reason, n in workers.get("validation_rejected_by_reason", {}).items():
                validation[reason] = validation.get(reason, 0) + n
            report = (last_commit, gw.writer.stats.batches + workers.get("writer_batches", 0), validation,
                      status["drivers"].get("mqtt", {}), connected_at)
        finally:
            recorder.cancel()
            await gw.stop()
        results.put(report)

    asyncio.run(serve())


def _e2e(dsn: str, broker: EmbeddedMosquitto, stream: list[tuple[str, bytes]], prefix: str,
         samples_total: int, spool: Path, gateways: int, ingest_workers: int) -> dict[str, Any]:
    """The e2e run: ``gateways`` gateway processes (on one shared subscription when more than one, the
    documented way to scale past one process's interpreter lock) drain the queued stream; the clock runs from
    the first one's MQTT connection to the last commit of any of them (``start_s``: from their go to that
    connection)."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, stop = ctx.Semaphore(0), ctx.Event(), ctx.Event()
    written, received = ctx.Array("q", gateways, lock=False), ctx.Array("q", gateways, lock=False)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_gateway_process, daemon=False, args=(  # non-daemonic: may start ingest workers
            i, _gateway_settings(dsn, broker.url, prefix, f"bench-gateway-{i + 1}", spool / str(i),
                                 "bench" if gateways > 1 else None, ingest_workers),
            ready, go, stop, written, received, results))
        for i in range(gateways)
    ]

    def check_alive() -> None:
        failed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
        if failed:
            raise RuntimeError(f"a bench gateway process failed (exit codes {[p.exitcode for p in procs]})")

    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            deadline = time.monotonic() + 120
            while not ready.acquire(timeout=0.5):
                check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("a bench gateway process did not start within 120 s")
        _queue_stream(broker, stream)
        started = time.monotonic()
        go.set()
        progress: list[tuple[float, int]] = []  # sampled through the gateways' drain, until their reports
        reports: list[tuple[float, int, dict[str, int], dict[str, Any], float]] = []
        idle_since, last, stopped_at = started, -1, None
        while len(reports) < gateways:
            time.sleep(0.005)
            progress.append((time.monotonic(), sum(written)))
            with contextlib.suppress(queue.Empty):
                reports.append(results.get_nowait())
            check_alive()
            if stopped_at is None:
                if sum(received) != last:
                    idle_since, last = time.monotonic(), sum(received)
                # All in (the rest is committing, or was rejected), or nothing more arrives (the rest is lost).
                if last >= samples_total or time.monotonic() - idle_since > 10 or time.monotonic() - started > 600:
                    stop.set()
                    stopped_at = time.monotonic()
            elif time.monotonic() - stopped_at > 120:
                raise RuntimeError("a bench gateway process did not report within 120 s of the stop")
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    finished = max(last_commit for last_commit, *_ in reports)
    connected = min(report[4] for report in reports)
    total_written = sum(written)
    progress = [(t, n) for t, n in progress if t <= finished] + [(finished, total_written)]
    validation: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for _, _, by_reason, driver, _ in reports:
        for reason, n in by_reason.items():
            validation[reason] = validation.get(reason, 0) + n
        for reason, n in driver.get("rejected_by_reason", {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
    return {"elapsed_s": finished - connected, "start_s": connected - started, "written": total_written,
            "received": sum(received),
            "driver": {"rejected_by_reason": rejected}, "batches": sum(r[1] for r in reports),
            "validation_rejected": validation,
            "sustained_samples_per_s": _sustained_rate(progress, total_written),
            "per_gateway_samples": list(written)}


def _sustained_rate(progress: list[tuple[float, int]], total: int) -> float | None:
    """Samples committed per second from the first commit past 10 % of ``total`` (what the run committed in the
    end) to the first past 90 %.

    The run's own figure counts the gateway's start and the drain of its queue after the last message; this
    one is the rate in between, what a fleet that never stops sending would see. None when too few commits.
    """
    low = next(((t, n) for t, n in progress if n >= total * 0.1), None)
    high = next(((t, n) for t, n in progress if n >= total * 0.9), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def run_mqtt_bench(*, cars: int = 1000, messages: int | None = None, batch: int = 1, gateways: int = 1,
                   ingest_workers: int = 0, dsn: str | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the figures (see the module docstring).

    ``messages`` defaults to 100,000 single-sample messages, or to 500,000 samples in messages of ``batch``:
    a batched run of 200,000 samples lasted about one second, of which the gateway's start (connections,
    subscriptions, registering 1,000 new cars) took a tenth.
    """
    if messages is None:
        messages = 100_000 if batch == 1 else max(100, 500_000 // batch)
    start_ms = int((time.time() - 3 * 86400) * 1000)  # three days of history: all in the past
    with _services(dsn) as (db, broker), tempfile.TemporaryDirectory(prefix="patrolgate-bench-") as tmp:
        from telemetry import storage

        storage.upgrade(db)
        ceiling_stream = make_stream(cars, messages, batch, "bench/ceiling", start_ms)
        ceiling, publish_rate = _ceiling(broker, ceiling_stream, "bench/ceiling")
        transport = asyncio.run(_transport_only(broker, ceiling_stream, "bench/ceiling"))
        del ceiling_stream
        stream = make_stream(cars, messages, batch, "bench/e2e", start_ms)
        samples_total = len(stream) * batch
        result = _e2e(db, broker, stream, "bench/e2e", samples_total, Path(tmp) / "spool", gateways,
                      ingest_workers)
    msgs_per_s = len(stream) / result["elapsed_s"]
    return {
        "cars": cars,
        "messages": len(stream),
        "batch": batch,
        "gateways": gateways,
        "ingest_workers": ingest_workers,
        "payload_bytes_avg": round(sum(len(p) for _, p in stream) / len(stream)),
        "e2e_msgs_per_s": round(msgs_per_s),
        "e2e_samples_per_s": round(msgs_per_s * batch),
        "sustained_samples_per_s": None if result["sustained_samples_per_s"] is None
        else round(result["sustained_samples_per_s"]),
        "ceiling_msgs_per_s": round(ceiling),
        "ratio": round(msgs_per_s / ceiling, 3),
        "transport_msgs_per_s": round(transport),
        "pipeline_ratio": round(msgs_per_s / transport, 3),
        # Rejected samples are not lost: they are stored in `rejected` with their reason.
        "lost": samples_total - result["written"] - sum(result["validation_rejected"].values()),
        "samples_committed": result["written"],
        "writer_batches": result["batches"],
        "elapsed_s": round(result["elapsed_s"], 3),
        "start_s": round(result["start_s"], 3),
        "publisher_msgs_per_s": round(publish_rate),
        "rejected": result["driver"].get("rejected_by_reason", {}),  # by the MQTT contract (a payload, an element)
        "validation_rejected": result["validation_rejected"],  # samples, by the pipeline's validation
        **({"per_gateway_samples": result["per_gateway_samples"]} if gateways > 1 else {}),
    }

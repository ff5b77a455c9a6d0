"""The running gateway: builds the pipeline from the settings, starts it in order and stops it in reverse.

Start: storage first (embedded PostgreSQL when none is configured, migrations, writer, housekeeping), then the
drivers, then the API. Stop (SIGTERM/SIGINT): API and drivers first, so nothing new arrives, then the writer's
final flush (to the database, or to the disk spool if it is down), then the embedded services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from drivers.base import Driver
from gateway.config import GatewaySettings, MavlinkConfig, MqttConfig
from gateway.embedded import EmbeddedMosquitto, EmbeddedPostgres, ServiceError
from gateway.fleet import Fleet
from gateway.ingest_pool import IngestPool, adopt_orphan_spools
from gateway.live import LiveState
from gateway.pipeline import Pipeline
from gateway.runtime import tune_gc_for_ingest
from telemetry import storage
from telemetry.model import VehicleKind
from telemetry.validation import ValidationLimits, Validator
from telemetry.writer import TelemetryWriter, WriterSettings

__all__ = ["Gateway", "storage_settings", "writer_settings"]

log = logging.getLogger(__name__)

#: How long stop() waits for a storage maintenance under way (each of its statements gives up on a lock after
#: ``storage.MAINTAIN_LOCK_TIMEOUT_MS``) before stopping storage anyway.
MAINTENANCE_STOP_WAIT_S = 30.0


def storage_settings(settings: GatewaySettings) -> storage.StorageSettings:
    s = settings.storage
    return storage.StorageSettings(
        backend=s.backend, chunk_interval=s.chunk_interval, compress_after=s.compress_after,
        retention=s.retention, partitions_ahead_days=s.partitions_ahead_days,
    )


def writer_settings(settings: GatewaySettings) -> WriterSettings:
    w = settings.writer
    return WriterSettings(
        batch_rows=w.batch_rows, flush_interval_s=w.flush_interval.total_seconds(),
        queue_max_rows=w.queue_max_rows, spool_dir=str(w.spool_dir), spool_max_bytes=w.spool_max_bytes,
    )


def validation_limits(settings: GatewaySettings) -> ValidationLimits:
    v = settings.validation
    return ValidationLimits(
        max_speed_mps={VehicleKind.DRONE: v.max_speed_drone_mps, VehicleKind.PATROL_CAR: v.max_speed_car_mps},
        jump_noise_m=v.jump_noise_m, max_future_s=v.max_future.total_seconds(),
    )


def mavlink_driver(cfg: MavlinkConfig) -> Driver:
    from drivers.mavlink import DroneConfig, MavlinkDriver, MavlinkOptions

    return MavlinkDriver(MavlinkOptions(
        endpoints=list(cfg.endpoints), forward=list(cfg.forward),
        drones={v.sysid: DroneConfig(v.id, v.name, bytes.fromhex(v.signing_key) if v.signing_key else None,
                                     v.require_signing) for v in cfg.vehicles},
        auto_register=cfg.auto_register, heartbeat_timeout_s=cfg.heartbeat_timeout.total_seconds(),
        gcs_sysid=cfg.gcs_sysid, gcs_compid=cfg.gcs_compid, message_rates_hz=dict(cfg.message_rates_hz),
        command_timeout_s=cfg.command_timeout.total_seconds(), command_retries=cfg.command_retries,
    ))


def mqtt_driver(cfg: MqttConfig, offload: IngestPool | None = None) -> Driver:
    from drivers.mqtt import MqttDriver, MqttOptions

    assert cfg.broker is not None
    return MqttDriver(MqttOptions(
        broker=cfg.broker, prefix=cfg.prefix, client_id=cfg.client_id, username=cfg.username,
        password=cfg.password, protocol=cfg.protocol, tls_ca_file=str(cfg.tls_ca_file) if cfg.tls_ca_file else None,
        tls_insecure=cfg.tls_insecure, keepalive_s=cfg.keepalive_s,
        session_expiry_s=int(cfg.session_expiry.total_seconds()), shared_group=cfg.shared_group,
        max_inflight=cfg.max_inflight, open_registration=cfg.open_registration,
        allowed_vehicles=set(cfg.allowed_vehicles), silence_timeout_s=cfg.silence_timeout.total_seconds(),
        command_timeout_s=cfg.command_timeout.total_seconds(),
    ), offload=offload)


class Gateway:
    """One gateway instance. ``embedded_broker`` starts a throwaway mosquitto when MQTT has no broker set."""

    def __init__(self, settings: GatewaySettings, *, embedded_broker: bool = False) -> None:
        self.settings = settings
        self.embedded_broker = embedded_broker
        self.dsn: str | None = settings.database.dsn
        self.live = LiveState()
        self.fleet = Fleet()
        self.drivers: list[Driver] = []
        self.writer: TelemetryWriter | None = None
        self.pipeline: Pipeline | None = None
        #: The MQTT ingest worker processes (``[mqtt] ingest_workers``), None when telemetry is decoded here.
        self.ingest: IngestPool | None = None
        self.api_port: int | None = None
        #: The MQTT broker the gateway uses (configured or embedded), None when MQTT is off.
        self.mqtt_broker_url: str | None = None
        self._pg: EmbeddedPostgres | None = None
        self._broker: EmbeddedMosquitto | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._maintaining: asyncio.Future[dict[str, Any]] | None = None  # storage.maintain in its thread
        self._api_server: Any = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        tune_gc_for_ingest()
        if self.dsn is None:
            log.warning("no database configured: starting a throwaway embedded PostgreSQL (data is not kept)")
            self._pg = await asyncio.to_thread(EmbeddedPostgres().start)
            self.dsn = self._pg.dsn
        mqtt = await self._mqtt_settings()
        workers = mqtt.ingest_workers if mqtt.broker is not None else 0
        if workers:
            self.ingest = IngestPool(workers, self.dsn, writer_settings(self.settings),
                                     validation_limits(self.settings), on_latest=self.live.update)
            await self.ingest.launch()  # their start overlaps the rest of ours
        st = storage_settings(self.settings)
        applied = await asyncio.to_thread(storage.upgrade, self.dsn, st, then_maintain=False)  # housekeeping does
        if applied:
            log.info("database migrated to schema %s", applied[-1])
        if self.settings.writer.spool_dir is not None:  # before any spool is opened: see adopt_orphan_spools
            await asyncio.to_thread(adopt_orphan_spools, self.settings.writer.spool_dir, workers)
        self.writer = TelemetryWriter(self.dsn, writer_settings(self.settings))
        await self.writer.start()
        validator = Validator(validation_limits(self.settings))
        # Messages in flight at the last stop may be redelivered: recognise them as duplicates.
        for vehicle, times in (await asyncio.to_thread(storage.recent_key_times, self.dsn)).items():
            validator.seed(vehicle, times)
        self.pipeline = Pipeline(self.writer, validator, self.live)
        self._tasks.append(asyncio.create_task(self._housekeeping(st), name="patrolgate-housekeeping"))
        await self._start_drivers(mqtt)
        if self.settings.api.enabled:
            await self._start_api()
        log.info("gateway running: %d driver(s), database %s", len(self.drivers), _redact(self.dsn))

    async def _mqtt_settings(self) -> MqttConfig:
        """The MQTT settings in effect: the configured broker, or an embedded one when none is configured and
        the gateway may start one (``broker`` stays None when MQTT is off)."""
        mqtt = self.settings.mqtt
        if mqtt.broker is None and self.embedded_broker:
            try:
                self._broker = await asyncio.to_thread(EmbeddedMosquitto().start)
            except ServiceError as exc:
                log.warning("no MQTT broker configured and no embedded one could start (%s): MQTT is off", exc)
            else:
                mqtt = mqtt.model_copy(update={"broker": self._broker.url})
                log.warning("no MQTT broker configured: started an embedded mosquitto at %s", self._broker.url)
        return mqtt

    async def _start_drivers(self, mqtt: MqttConfig) -> None:
        assert self.pipeline is not None
        if self.settings.mavlink.endpoints:
            self.drivers.append(mavlink_driver(self.settings.mavlink))
        if mqtt.broker is not None:
            self.mqtt_broker_url = mqtt.broker
            if self.ingest is not None:
                await self.ingest.start()
            self.drivers.append(mqtt_driver(mqtt, self.ingest))
        for driver in self.drivers:
            await driver.start(self.pipeline)
            self.fleet.add(driver)

    async def _start_api(self) -> None:
        import uvicorn

        from api.app import create_app

        app = create_app(self)
        config = uvicorn.Config(app, host=self.settings.api.host, port=self.settings.api.port,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        self._api_server = server
        self._tasks.append(asyncio.create_task(server.serve(), name="patrolgate-api"))
        while not server.started:
            await asyncio.sleep(0.02)
        sockets = [s for srv in server.servers for s in srv.sockets]
        self.api_port = sockets[0].getsockname()[1] if sockets else self.settings.api.port
        log.info("API listening on http://%s:%s", self.settings.api.host, self.api_port)

    async def _housekeeping(self, st: storage.StorageSettings) -> None:
        """`storage.maintain` at start, beside ingest (not before it), then every ``maintenance_interval``;
        a failed run (the database away at start) is retried within a minute."""
        interval_s = self.settings.storage.maintenance_interval.total_seconds()
        while True:
            # Shielded, and awaited by stop(): a cancel cannot stop the thread, which would go on against a
            # database that stop() is shutting down.
            self._maintaining = asyncio.ensure_future(asyncio.to_thread(storage.maintain, self.dsn or "", st))
            try:
                report = await asyncio.shield(self._maintaining)
            except Exception as exc:
                log.warning("storage housekeeping failed (will retry): %s", exc)
                await asyncio.sleep(min(interval_s, 60.0))
                continue
            if report.get("created") or report.get("dropped"):
                log.info("storage housekeeping: %s", report)
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        """Drivers first, then the writer's final flush, then storage; safe to call twice."""
        if self._api_server is not None:
            self._api_server.should_exit = True
        for driver in reversed(self.drivers):
            try:
                await driver.stop()
            except Exception:
                log.exception("stopping driver %s failed", driver.name)
        self.drivers.clear()
        if self.ingest is not None:  # after the MQTT driver: it has handed over its last messages
            await self.ingest.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._maintaining is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._maintaining), MAINTENANCE_STOP_WAIT_S)
            except TimeoutError:
                log.warning("storage housekeeping still running after %.0f s; stopping without it",
                            MAINTENANCE_STOP_WAIT_S)
            except Exception:  # its failure was logged by housekeeping, or does not matter now
                pass
            self._maintaining = None
        writer_failure: BaseException | None = None
        if self.writer is not None:
            try:
                await self.writer.stop()
                log.info("writer flushed: %s", self.writer.stats.as_dict())
            except Exception as exc:  # rows may be lost: shut the rest down, then say so
                log.exception("the writer failed while flushing: %s", self.writer.stats.as_dict())
                writer_failure = exc
            self.writer = None
        if self._broker is not None:
            await asyncio.to_thread(self._broker.stop)
            self._broker = None
        if self._pg is not None:
            await asyncio.to_thread(self._pg.stop)
            self._pg = None
        self._stopped.set()
        if writer_failure is not None:
            raise writer_failure

    async def run_until_signalled(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop cleanly (flushing everything)."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        try:
            await self.start()
            await stop_requested.wait()
            log.info("signal received: stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def status(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.stats() if self.pipeline else None,
            "drivers": {d.name: d.stats() for d in self.drivers},
            "vehicles_live": len(self.live.latest),
            **({"ingest_workers": self.ingest.stats()} if self.ingest else {}),
        }

    async def flush(self) -> None:
        """Wait until everything received so far is durable, the ingest workers' part included. The workers'
        reports (vehicles first seen) become driver hand-overs in turn: hence the order."""
        if self.ingest is not None:
            await self.ingest.settle()
        for driver in self.drivers:
            await driver.flush()
        if self.ingest is not None:
            await self.ingest.settle()
        if self.writer is not None:
            await self.writer.flush()

    def samples_counts(self) -> tuple[int, int]:
        """(samples committed, samples received) by the pipeline and the ingest workers together."""
        written = self.writer.stats.written if self.writer else 0
        received = self.pipeline.received if self.pipeline else 0
        if self.ingest is not None:
            stats = self.ingest.stats()
            written += stats["written"]
            received += stats["samples"]
        return written, received


def _redact(dsn: str | None) -> str:
    if not dsn:
        return "-"
    import re

    return re.sub(r"://([^:@/]+):[^@/]+@", r"://\1:***@", dsn)

"""The fleet runner: many cars, their MQTT connections, and the tick loop that moves them and samples them.

Cars are spread over up to 50 time slots per telemetry period so 1,000 cars do not all publish in the same
millisecond (real cars are not synchronised either), which also keeps the event loop responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from simulators.patrol_car.faults import CarFaults
from simulators.patrol_car.grid import StreetGrid
from simulators.patrol_car.link import CarLink, CarTopics, SharedListener
from simulators.patrol_car.motion import SimulatedCar
from simulators.patrol_car.stats import FleetStats
from simulators.patrol_car.transport import BrokerAddress, ConnectionListener, MqttConnection

__all__ = ["CarFleet", "run_car_fleet", "vehicle_ids"]

log = logging.getLogger("patrolgate.sim.car")

_MIN_SLOT_S = 0.005
_MAX_SLOTS = 50


def vehicle_ids(count: int, first_index: int = 1) -> list[str]:
    """``car-01``, ``car-02``, ...: zero padded to 2 digits, or more when the numbers need it."""
    width = max(2, len(str(first_index + count - 1)))
    return [f"car-{n:0{width}d}" for n in range(first_index, first_index + count)]


class CarFleet:
    """Many `SimulatedCar` on one grid, each speaking the MQTT contract.

    ``shared_connection=False`` (default): one MQTT client per car, client id = vehicle id, each with its own
    last will, the realistic setup. ``shared_connection=True``: the cars publish through ``connections``
    clients (benchmark mode, far less broker and socket overhead); those clients are named
    ``carsim-{first_index}-c{k}`` and their last will goes to ``{prefix}/carsim-{first_index}-c{k}/status``,
    so a lost shared connection cannot mark the individual cars offline.

    Use as ``async with CarFleet(...) as fleet: await fleet.run(stop)``; the runtime fault methods
    (`disconnect`, `drop_connection`, `set_clock_skew`, and changing `faults` fields) work while it runs.
    """

    def __init__(
        self,
        count: int,
        broker: str,
        *,
        prefix: str = "patrolgate/v1",
        first_index: int = 1,
        rate_hz: float = 1.0,
        batch: int = 1,
        time_factor: float = 1.0,
        username: str | None = None,
        password: str | None = None,
        faults: CarFaults | None = None,
        seed: int | None = None,
        qos: int = 1,
        event_prob: float = 0.0,
        shared_connection: bool = False,
        connections: int = 4,
        clock: str = "wall",
        grid: StreetGrid | None = None,
        keepalive: int = 60,
        connect_timeout: float = 10.0,
        connect_concurrency: int = 64,
    ) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        if first_index < 0:
            raise ValueError("first_index must be >= 0")
        if rate_hz <= 0 or time_factor <= 0:
            raise ValueError("rate_hz and time_factor must be > 0")
        if not 1 <= batch <= 1000:
            raise ValueError("batch must be in [1, 1000] (the contract allows 1000 samples per array)")
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        if clock not in ("wall", "sim"):
            raise ValueError("clock must be 'wall' (real time) or 'sim' (simulated time)")
        if not prefix or any(c in prefix for c in "+#") or prefix.endswith("/"):
            raise ValueError(f"bad topic prefix {prefix!r}")
        if not 0.0 <= event_prob <= 1.0:
            raise ValueError("event_prob must be in [0, 1]")
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self.address = BrokerAddress.parse(broker, username, password)
        self.prefix = prefix
        self.first_index = first_index
        self.rate_hz = rate_hz
        self.batch = batch
        self.time_factor = time_factor
        self.qos = qos
        self.event_prob = event_prob
        self.shared_connection = shared_connection
        self.connections_wanted = connections
        self.faults = faults or CarFaults()
        self.clock = clock
        self.grid = grid or StreetGrid()
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.connect_concurrency = connect_concurrency
        self._stats = FleetStats()
        self._t0_ms = time.time_ns() // 1_000_000
        master = random.Random(seed)
        self.cars: list[SimulatedCar] = []
        self.links: list[CarLink] = []
        clock_fn = self._wall_ms if clock == "wall" else self._sim_ms
        for vid in vehicle_ids(count, first_index):
            car = SimulatedCar(vid, self.grid, random.Random(master.getrandbits(64)))
            rng = random.Random(master.getrandbits(64))
            skew = self.faults.clock_skew_s
            if self.faults.clock_skew_spread_s:
                skew += rng.uniform(-self.faults.clock_skew_spread_s, self.faults.clock_skew_spread_s)
            self.cars.append(car)
            self.links.append(CarLink(
                car, CarTopics.build(prefix, vid), self._stats, self.faults, clock_ms=clock_fn, batch=batch,
                qos=qos, rng=rng, clock_skew_s=skew, shared=shared_connection,
            ))
        self._by_id = {link.car.vehicle_id: link for link in self.links}
        self.connections: list[MqttConnection] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self._started = False

    # --- clocks ---------------------------------------------------------------------------------------------
    @staticmethod
    def _wall_ms(car: SimulatedCar) -> int:
        return time.time_ns() // 1_000_000

    def _sim_ms(self, car: SimulatedCar) -> int:
        return self._t0_ms + round(car.sim_time_s * 1000.0)

    # --- access ---------------------------------------------------------------------------------------------
    @property
    def vehicle_ids(self) -> list[str]:
        return [c.vehicle_id for c in self.cars]

    def car(self, vehicle_id: str) -> SimulatedCar:
        return self._by_id[vehicle_id].car

    def link(self, vehicle_id: str) -> CarLink:
        return self._by_id[vehicle_id]

    @property
    def stats(self) -> FleetStats:
        """The counters, with the broker-confirmed count and failed reconnects brought up to date."""
        self._stats.puback_received = sum(c.acked for c in self.connections)
        self._stats.connect_failures = sum(c.failed_attempts for c in self.connections)
        return self._stats

    @property
    def pending(self) -> int:
        """QoS 1 publishes not yet confirmed by the broker."""
        return sum(c.pending for c in self.connections)

    # --- runtime faults -------------------------------------------------------------------------------------
    def disconnect(self, vehicle_id: str, for_s: float | None = None) -> None:
        """Take one car offline for ``for_s`` wall seconds (default ``faults.disconnect_for_s``); see
        `CarLink.disconnect` for what happens with a shared connection."""
        self._by_id[vehicle_id].disconnect(self.faults.disconnect_for_s if for_s is None else for_s)

    def drop_connection(self, index: int, for_s: float | None = None) -> None:
        """Cut connection ``index`` abruptly (in shared mode that takes all its cars offline)."""
        self.connections[index].drop(self.faults.disconnect_for_s if for_s is None else for_s)

    def set_clock_skew(self, vehicle_id: str, skew_s: float) -> None:
        self._by_id[vehicle_id].clock_skew_s = skew_s

    # --- life cycle -----------------------------------------------------------------------------------------
    async def __aenter__(self) -> CarFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect every car (or shared connection); raises ConnectionError if any cannot connect."""
        if self._started:
            return
        self._started = True
        self._t0_ms = time.time_ns() // 1_000_000
        pairs: list[tuple[str, str, ConnectionListener]] = []
        if self.shared_connection:
            k = min(len(self.links), self.connections_wanted)
            for i in range(k):
                members = self.links[i::k]
                cid = f"carsim-{self.first_index}-c{i + 1}"
                pairs.append((cid, f"{self.prefix}/{cid}/status", SharedListener(members)))
        else:
            pairs = [(link.car.vehicle_id, link.topics.status, link) for link in self.links]
        inflight = 100 if self.shared_connection else 20
        self.connections = [
            MqttConnection(cid, self.address, listener, will_topic=will, keepalive=self.keepalive,
                           max_inflight=inflight, connect_timeout=self.connect_timeout)
            for cid, will, listener in pairs
        ]
        if self.shared_connection:
            for i, link in enumerate(self.links):
                link.conn = self.connections[i % len(self.connections)]
        else:
            for link, conn in zip(self.links, self.connections, strict=True):
                link.conn = conn
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def one(conn: MqttConnection) -> None:
            async with gate:
                await conn.connect()

        results = await asyncio.gather(*(one(c) for c in self.connections), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self._stats.connect_failures += len(errors)
            await self.close()
            raise ConnectionError(f"{len(errors)} of {len(self.connections)} connections failed: {errors[0]}")
        self._housekeeping = asyncio.get_running_loop().create_task(self._keepalive_loop())
        log.info("car fleet connected: %d cars over %d connections to %s:%d", len(self.cars),
                 len(self.connections), self.address.host, self.address.port)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for conn in self.connections:
                conn.misc()

    async def run(self, stop: asyncio.Event | None = None) -> FleetStats:
        """Move and sample the cars until ``stop`` is set (forever when None); returns the counters."""
        await self.start()
        loop = asyncio.get_running_loop()
        period = 1.0 / (self.rate_hz * self.time_factor)  # wall seconds between two samples of a car
        dt = 1.0 / self.rate_hz  # simulated seconds between two samples of a car
        n = len(self.cars)
        slots = max(1, min(n, _MAX_SLOTS, int(period / _MIN_SLOT_S)))
        groups = [[(self.cars[i], self.links[i]) for i in range(s, n, slots)] for s in range(slots)]
        interval = period / slots
        event_prob = self.event_prob
        next_t = loop.time()
        k = 0
        while stop is None or not stop.is_set():
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            if stop is not None and stop.is_set():
                break
            event_prob = self.event_prob
            for car, link in groups[k]:
                car.step(dt)
                link.tick(event_prob)
            k = k + 1 if k + 1 < slots else 0
            next_t += interval
            if loop.time() - next_t > 2.0 * period:  # overloaded: do not try to catch up in a rush
                self._stats.late_ticks += 1
                next_t = loop.time()
        return self.stats

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until the broker has confirmed every QoS 1 publish; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return not self.pending

    async def close(self) -> None:
        """Clean stop: partial batches, retained ``offline`` per car, wait for acks, MQTT DISCONNECT."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        for link in self.links:
            if link.conn is not None:
                link.say_goodbye()
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)


async def run_car_fleet(
    count: int,
    broker: str,
    *,
    prefix: str = "patrolgate/v1",
    first_index: int = 1,
    rate_hz: float = 1.0,
    batch: int = 1,
    time_factor: float = 1.0,
    username: str | None = None,
    password: str | None = None,
    faults: CarFaults | None = None,
    stop: asyncio.Event | None = None,
    seed: int | None = None,
    qos: int = 1,
    event_prob: float = 0.0,
    shared_connection: bool = False,
    connections: int = 4,
    clock: str = "wall",
    stats_every_s: float | None = None,
) -> FleetStats:
    """Run ``count`` simulated patrol cars against ``broker`` until ``stop`` is set; returns what was sent.

    See `CarFleet` for the parameters beyond the contract (shared connections, the vehicle clock).
    ``stats_every_s``: log the fleet's counters that often, and once more at the end.
    """
    fleet = CarFleet(
        count, broker, prefix=prefix, first_index=first_index, rate_hz=rate_hz, batch=batch,
        time_factor=time_factor, username=username, password=password, faults=faults, seed=seed, qos=qos,
        event_prob=event_prob, shared_connection=shared_connection, connections=connections, clock=clock,
    )
    reporter = asyncio.create_task(_log_stats(fleet, stats_every_s)) if stats_every_s else None
    try:
        await fleet.run(stop)
    finally:
        if reporter is not None:
            reporter.cancel()
        await fleet.close()
    if reporter is not None:
        log.info("stopped: %s", fleet.stats)
    return fleet.stats


async def _log_stats(fleet: CarFleet, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        log.info("%s", fleet.stats)

"""`patrolgate demo`: the gateway, its API and a simulated district fleet in one process.

Drones fly from the street office over MAVLink (UDP loopback) and patrol cars drive the street grid over MQTT
(an embedded mosquitto unless one is configured), so a fresh machine shows live data at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.config import GatewaySettings
from gateway.service import Gateway

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


async def run_demo(settings: GatewaySettings, *, drones: int = 5, cars: int = 13, seconds: float = 0.0) -> None:
    """Run until Ctrl-C (or ``seconds``); drones get system ids 1..N, cars ids car-01..."""
    from simulators.drone import run_drone_fleet
    from simulators.patrol_car import run_car_fleet

    mavlink = settings.mavlink.model_copy(update={"endpoints": ["udpin:127.0.0.1:0"]})
    gw = Gateway(settings.model_copy(update={"mavlink": mavlink}), embedded_broker=True)
    await gw.start()
    stop = asyncio.Event()
    tasks = []
    try:
        if drones:
            port = gw.drivers[0].local_address()[1]  # type: ignore[attr-defined]
            tasks.append(asyncio.create_task(run_drone_fleet(drones, f"udpout:127.0.0.1:{port}", stop=stop)))
        broker = gw.mqtt_broker_url
        if cars and broker:
            tasks.append(asyncio.create_task(run_car_fleet(cars, broker, prefix=gw.settings.mqtt.prefix, stop=stop)))
        log.info("demo running: %d drones, %d cars; API on http://%s:%s/api/v1/vehicles", drones, cars,
                 settings.api.host, gw.api_port)
        if seconds > 0:
            await asyncio.sleep(seconds)
        else:
            await asyncio.Event().wait()
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        await gw.stop()

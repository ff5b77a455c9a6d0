"""Simulated patrol cars ("巡街宝") driving on a city district's street grid and speaking patrolgate's MQTT
contract (docs/mqtt.md). An independent peer of the gateway: it imports nothing from patrolgate itself.

`run_car_fleet` is what ``patrolgate sim cars`` calls; `CarFleet` and `SimulatedCar` are for tests and
benchmarks. See README.md in this folder.
"""

from simulators.patrol_car.commands import SUPPORTED_COMMANDS
from simulators.patrol_car.faults import MALFORMED_KINDS, CarFaults
from simulators.patrol_car.fleet import CarFleet, run_car_fleet, vehicle_ids
from simulators.patrol_car.grid import StreetGrid
from simulators.patrol_car.motion import SimulatedCar
from simulators.patrol_car.stats import FleetStats

__all__ = [
    "MALFORMED_KINDS",
    "SUPPORTED_COMMANDS",
    "CarFaults",
    "CarFleet",
    "FleetStats",
    "SimulatedCar",
    "StreetGrid",
    "run_car_fleet",
    "vehicle_ids",
]

"""MQTT patrol cars and drones: the v1 contract, the asyncio paho client, the driver."""

from drivers.mqtt.contract import CONTRACT_VERSION, ContractError
from drivers.mqtt.driver import MqttDriver, MqttOptions

__all__ = ["CONTRACT_VERSION", "ContractError", "MqttDriver", "MqttOptions"]

"""MQTT over asyncio: a paho-mqtt 2.x client driven by the event loop instead of its own network thread.

A thread per client does not scale to 1,000 simulated cars in one process, so (as aiomqtt does) the paho
socket is registered with the loop: readable -> ``loop_read``, writable while paho has queued bytes ->
``loop_write`` (paho asks via the socket register/unregister-write callbacks), and the owner calls `misc`
about once a second for keep-alive pings. The TCP connect itself is done with ``loop.sock_connect`` and the
connected socket handed to paho, so connecting 1,000 clients never blocks the loop on a slow network.

Reconnecting is done here too (paho's own reconnect lives in its thread loop): after an unexpected loss the
connection retries with jittered exponential backoff, always with clean start off and a session expiry, so
the broker keeps the subscriptions and queued QoS 1 messages (persistent session), and paho re-sends the
QoS 1 publishes that were in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["BrokerAddress", "ConnectionListener", "MqttConnection"]

log = logging.getLogger("patrolgate.sim.car")

_RECONNECT_MIN_S = 0.5
_RECONNECT_MAX_S = 10.0


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in; parsed from ``mqtt://[user[:password]@]host[:port]``."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, username: str | None = None, password: str | None = None) -> BrokerAddress:
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"unsupported broker URL scheme {parts.scheme!r} (use mqtt://host:port)")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        user = username if username is not None else (unquote(parts.username) if parts.username else None)
        pw = password if password is not None else (unquote(parts.password) if parts.password else None)
        return cls(parts.hostname, parts.port or 1883, user, pw)


class ConnectionListener(Protocol):
    """What a connection reports to its owner; all calls happen on the event loop thread."""

    def on_connected(self, conn: MqttConnection, session_present: bool) -> None: ...

    def on_disconnected(self, conn: MqttConnection, expected: bool) -> None: ...

    def on_message(self, conn: MqttConnection, topic: str, payload: bytes) -> None: ...


class _Client(mqtt.Client):
    """paho Client that can be handed an already connected socket (paho has no public hook for that)."""

    _pg_sock: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self._pg_sock = self._pg_sock, None
        if sock is not None:
            return sock
        return super()._create_socket_connection()  # type: ignore[misc]


async def _open_tcp(host: str, port: int, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: Exception = OSError(f"cannot resolve {host}")
    for family, stype, proto, _, addr in infos:
        sock = socket.socket(family, stype, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


class MqttConnection:
    """One MQTT 5 client session (one client id, one last will) driven by the running asyncio loop."""

    def __init__(
        self,
        client_id: str,
        address: BrokerAddress,
        listener: ConnectionListener,
        *,
        will_topic: str | None = None,
        keepalive: int = 60,
        session_expiry_s: int = 3600,
        max_inflight: int = 20,
        connect_timeout: float = 10.0,
        auto_reconnect: bool = True,
    ) -> None:
        self.client_id = client_id
        self.address = address
        self.listener = listener
        self.connect_timeout = connect_timeout
        self.auto_reconnect = auto_reconnect
        self.connects = 0  # successful CONNACKs, the first included
        self.acked = 0  # QoS > 0 publishes confirmed by the broker
        self.failed_attempts = 0  # reconnect attempts that failed
        self._max_inflight = max_inflight
        self._pending: set[int] = set()
        self._connected = False
        self._closing = False
        self._hold_until = 0.0
        self._backoff = _RECONNECT_MIN_S
        self._connack: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        c = _Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=client_id)
        if will_topic:
            c.will_set(will_topic, b"offline", qos=1, retain=True)
        if address.username is not None:
            c.username_pw_set(address.username, address.password)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        c.connect_async(address.host, address.port, keepalive=keepalive, clean_start=False, properties=props)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self.client = c

    # --- public ---------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """QoS > 0 publishes handed to paho and not yet acknowledged by the broker."""
        return len(self._pending)

    async def connect(self) -> None:
        """First connection; raises ConnectionError (refused, unreachable, or no CONNACK in time)."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        await self._open()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a publish; True when paho accepted it (sent now, or re-sent by paho after a reconnect)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            if qos:
                self._pending.add(info.mid)
            return True
        return False

    def subscribe(self, topics: list[str], qos: int = 1, chunk: int = 100) -> None:
        for i in range(0, len(topics), chunk):
            self.client.subscribe([(t, qos) for t in topics[i: i + chunk]])

    def misc(self) -> None:
        """Keep-alive housekeeping; call about once a second."""
        if self.client.socket() is not None:
            self.client.loop_misc()

    def drop(self, hold_s: float) -> None:
        """Cut the TCP connection abruptly (no DISCONNECT, so the broker publishes the last will) and
        reconnect after ``hold_s`` seconds."""
        loop = self._loop or asyncio.get_running_loop()
        self._hold_until = loop.time() + hold_s
        sock = self.client.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        # paho notices the end of stream on its next read; do it now so the state is immediate
        for _ in range(1000):
            if self.client.socket() is None or self.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    async def close(self, timeout: float = 5.0) -> None:
        """Clean stop: wait (bounded) for in-flight QoS 1 publishes, then send DISCONNECT (no last will)."""
        loop = asyncio.get_running_loop()
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
            self._reconnect_task = None
        deadline = loop.time() + timeout
        while self._pending and self._connected and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._connected:
            self._closed = loop.create_future()
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed, max(0.1, deadline - loop.time()))
        if self.client.socket() is not None:  # no clean goodbye possible: just close
            self.drop(0.0)

    # --- connecting -----------------------------------------------------------------------------------------
    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = await _open_tcp(self.address.host, self.address.port, self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"{self.client_id}: cannot reach {self.address.host}:{self.address.port}: "
                                  f"{exc}") from exc
        self._connack = loop.create_future()
        self.client._pg_sock = sock
        try:
            self.client.reconnect()
        except Exception as exc:
            raise ConnectionError(f"{self.client_id}: connect failed: {exc}") from exc
        finally:
            if self.client._pg_sock is not None:  # not taken: paho failed early, or connected by itself
                self.client._pg_sock = None
                sock.close()
        try:
            await asyncio.wait_for(self._connack, self.connect_timeout)
        except TimeoutError as exc:
            self._abort()
            raise ConnectionError(f"{self.client_id}: no CONNACK within {self.connect_timeout} s") from exc
        except ConnectionError:
            self._abort()
            raise

    def _abort(self) -> None:
        hold = self._hold_until
        self.drop(0.0)
        self._hold_until = hold

    def _schedule_reconnect(self) -> None:
        # never before the first success: a failing first `connect()` raises to its caller instead
        if self._closing or not self.auto_reconnect or self._loop is None or not self.connects:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing and not self._connected:
            delay = max(self._hold_until - loop.time(), self._backoff * random.uniform(0.5, 1.0))
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._open()
            except ConnectionError as exc:
                self.failed_attempts += 1
                self._backoff = min(self._backoff * 2.0, _RECONNECT_MAX_S)
                log.debug("reconnect failed: %s", exc)
                continue
            self._backoff = _RECONNECT_MIN_S

    # --- paho callbacks (run inside loop_read / loop_write on the loop thread) -------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        fut = self._connack
        if reason.is_failure:
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionRefusedError(f"{self.client_id}: broker refused: {reason}"))
            return
        self._connected = True
        self.connects += 1
        receive_max = getattr(props, "ReceiveMaximum", None)
        if receive_max and int(receive_max) < client.max_inflight_messages:
            # The broker's Receive Maximum caps our window. paho's setter refuses once connected, and this
            # callback runs inside the CONNACK: the attribute is what paho reads before each publish.
            client._max_inflight_messages = int(receive_max)
        if fut is not None and not fut.done():
            fut.set_result(bool(flags.session_present))
        # tell the owner after paho has finished handling CONNACK (it re-sends in-flight messages then)
        assert self._loop is not None
        self._loop.call_soon(self._notify_connected, bool(flags.session_present))

    def _notify_connected(self, session_present: bool) -> None:
        if not self._connected:
            return
        try:
            self.listener.on_connected(self, session_present)
        except Exception:
            log.exception("%s: on_connected handler failed", self.client_id)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was_connected = self._connected
        self._connected = False
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError(f"{self.client_id}: connection closed before CONNACK ({reason})"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if was_connected:
            try:
                self.listener.on_disconnected(self, self._closing)
            except Exception:
                log.exception("%s: on_disconnected handler failed", self.client_id)
        self._schedule_reconnect()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.listener.on_message(self, msg.topic, msg.payload)
        except Exception:
            log.exception("%s: message handler failed for %s", self.client_id, msg.topic)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if mid in self._pending:
            self._pending.discard(mid)
            self.acked += 1

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.add_reader(sock, self._read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.remove_reader(sock)
        loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.remove_writer(sock)

    def _read(self) -> None:
        self.client.loop_read()

    def _write(self) -> None:
        self.client.loop_write()

"""paho-mqtt 2.x on the asyncio loop, with manual acknowledgements: the gateway side of MQTT.

No paho network thread (as aiomqtt does it): the socket is registered with the loop (readable -> ``loop_read``
until the read-ahead buffer of ``transport`` is empty, writable while paho has bytes queued -> ``loop_write``)
and a task calls ``loop_misc`` for keep-alive. aiomqtt itself is not used because it acknowledges QoS 1
messages on receipt; the gateway must acknowledge a message only once its data is durable (committed, or
fsynced to the spool), so that a crash before that makes the broker redeliver it. Hence ``manual_ack=True``
and ``ack_many(mids)`` called by the driver after the commit.

Flow control: with MQTT 5 the CONNECT carries Receive Maximum = ``max_inflight``, so the broker never has more
unacknowledged messages out to us (paho's 16-bit packet ids would wrap past 65,535 and stall). With MQTT 3.1.1
(fallback when the broker refuses 5) there is no such property, so the client stops reading its socket while
``max_inflight`` messages are unacknowledged: TCP pushes back, the broker queues.

Sessions: clean start off and a session expiry, so the broker keeps our subscriptions and queues QoS 1
messages while the gateway is away; reconnects use jittered, doubling backoff. The blocking TCP/TLS connect
runs in a worker thread so a slow broker never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt.transport import GatewayPahoClient

__all__ = ["BrokerUrl", "MqttClient", "MqttConnectError"]

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # MQTT 5 CONNACK reason (a 3.1.1 broker's return code 1 arrives as 132)
#: Longest stretch of reading before the event loop gets a turn (seconds).
_READ_TURN_S = 0.005
#: Longest wait for the broker to close after our DISCONNECT (seconds).
_LINGER_S = 2.0
#: Wait before the first reconnect, doubled after every failure up to the maximum (seconds, +-50 % jitter).
RECONNECT_BACKOFF_INITIAL_S = 0.25
RECONNECT_BACKOFF_MAX_S = 15.0


class MqttConnectError(ConnectionError):
    """The broker refused us (bad credentials, not authorized, unsupported protocol) or is unreachable."""


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)


async def _read_until_closed(sock: Any, timeout_s: float) -> None:
    """After our DISCONNECT: discard what the broker still sends until it closes (or ``timeout_s``), so that
    closing our side cannot reset the connection before the broker has read our last PUBACKs. What is
    discarded was never acknowledged, so the broker keeps it for the next session."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            if not sock.recv(65_536):
                return
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            await asyncio.sleep(0.005)
        except OSError:
            return


class MqttClient:
    """One gateway connection. ``on_message(msg)`` is called on the loop for every message (``InboundMessage``,
    or paho's ``MQTTMessage`` for the rare packets paho decodes itself: the same attributes)."""

    def __init__(self, url: str, client_id: str, on_message: Callable[[Any], None], *,
                 username: str | None = None, password: str | None = None, protocol: str = "auto",
                 tls_ca_file: str | None = None, tls_insecure: bool = False, keepalive_s: int = 30,
                 session_expiry_s: int = 86_400, max_inflight: int = 1000,
                 on_connect: Callable[[bool], None] | None = None) -> None:
        self.url = BrokerUrl.parse(url)
        self.client_id = client_id
        self.on_message = on_message
        self.username = username if username is not None else self.url.username
        self.password = password if password is not None else self.url.password
        self.protocol = protocol
        self.tls_ca_file = tls_ca_file
        self.tls_insecure = tls_insecure
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.max_inflight = max_inflight
        self.on_connect_cb = on_connect
        self.version = 5 if protocol in ("auto", "5") else 4
        self.connected = asyncio.Event()
        self.stats = {"connects": 0, "disconnects": 0, "received": 0, "acked": 0, "published": 0,
                      "flow_pauses": 0}
        self.unacked = 0
        self._subscriptions: list[tuple[str, int]] = []
        self._client: GatewayPahoClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[tuple[bool, int]] | None = None
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._reading = False
        self._paused = False  # not reading, for any of the three reasons below
        self._flow_paused = False  # too many messages unacknowledged
        self._held = False  # the consumer has enough queued (``hold``)
        self._reading_stopped = False
        self._fd: int | None = None
        self._loop_thread = 0

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _new_client(self) -> GatewayPahoClient:
        protocol = mqtt.MQTTv5 if self.version == 5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"clean_session": False} if protocol == mqtt.MQTTv311 else {}
        c = GatewayPahoClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id,
                              protocol=protocol, manual_ack=True, on_inbound=self._on_message, **kwargs)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.url.tls:
            context = ssl.create_default_context(cafile=self.tls_ca_file)
            if self.tls_insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            c.tls_set_context(context)
        c.max_inflight_messages_set(self.max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        return c

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect (falling back to MQTT 3.1.1 when ``protocol='auto'`` and the broker refuses 5)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        self._reading_stopped = False
        try:
            await self._connect_once(timeout_s)
        except MqttConnectError as exc:
            if self.protocol != "auto" or self.version != 5 or getattr(exc, "unsupported", False) is not True:
                raise
            log.warning("broker %s:%s refused MQTT 5; falling back to 3.1.1", self.url.host, self.url.port)
            self.version = 4
            await self._connect_once(timeout_s)
        self._tasks.append(asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{self.client_id}"))

    async def _connect_once(self, timeout_s: float) -> None:
        assert self._loop is not None
        client = self._client = self._new_client()
        self._connack = self._loop.create_future()
        properties = None
        if self.version == 5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry_s
            properties.ReceiveMaximum = self.max_inflight
        kwargs: dict[str, Any] = {"clean_start": False, "properties": properties} if self.version == 5 else {}
        try:
            await asyncio.wait_for(
                self._loop.run_in_executor(None, lambda: client.connect(
                    self.url.host, self.url.port, keepalive=self.keepalive_s, **kwargs)), timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._drop_socket()
            raise MqttConnectError(f"cannot reach broker {self.url.host}:{self.url.port}: {exc}") from exc
        try:
            ok, code = await asyncio.wait_for(self._connack, timeout_s)
        except TimeoutError as exc:
            self._drop_socket()
            raise MqttConnectError(f"no CONNACK from {self.url.host}:{self.url.port} in {timeout_s} s") from exc
        if not ok:
            self._drop_socket()
            error = MqttConnectError(f"broker {self.url.host}:{self.url.port} refused the connection: "
                                     f"{mqtt.connack_string(code) if self.version == 4 else code}")
            # paho reports a 3.1.1 broker's refusal of an MQTT 5 CONNECT (return code 1) as 132 too.
            error.unsupported = code == _UNSUPPORTED_PROTOCOL  # type: ignore[attr-defined]
            raise error

    async def stop(self) -> None:
        """Disconnect cleanly (the broker keeps our session for the expiry interval)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        client = self._client
        if client is not None and client.is_connected():
            client.linger = True
            client.disconnect()
            with contextlib.suppress(Exception):
                client.loop_write()
            if client.lingering is not None:
                await _read_until_closed(client.lingering, _LINGER_S)
                client.lingering.close()
                client.lingering = None
        self._drop_socket()

    def _drop_socket(self) -> None:
        if self._client is not None and self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        self._reading = False
        if self._client is not None:
            sock = self._client.socket()
            if sock is not None:
                with contextlib.suppress(Exception):
                    sock.close()

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._client is not None and self._client.socket() is not None:
                self._client.loop_misc()

    async def _reconnect(self) -> None:
        """Try again after RECONNECT_BACKOFF_INITIAL_S, doubling up to RECONNECT_BACKOFF_MAX_S, each wait
        jittered by +-50 %: a gateway fleet that lost its broker does not come back in one wave."""
        backoff = RECONNECT_BACKOFF_INITIAL_S
        while not self._closing:
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            try:
                await self._connect_once(10.0)
                return
            except MqttConnectError as exc:
                log.warning("MQTT reconnect to %s:%s failed: %s", self.url.host, self.url.port, exc)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)

    # -- paho callbacks (always on the loop) -------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """paho calls some callbacks from the connect() worker thread: run ``fn`` on the loop either way."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(lambda: self._register(sock))

    def _register(self, sock: Any) -> None:
        assert self._loop is not None and self._client is not None
        self._fd = sock.fileno()
        self._set_reading(True)
        self._sync_writer()

    def _sync_writer(self) -> None:
        """Watch for writability exactly while paho has bytes queued."""
        if self._loop is None or self._fd is None or self._client is None:
            return
        if self._client.want_write():
            self._loop.add_writer(self._fd, self._client.loop_write)
        else:
            self._loop.remove_writer(self._fd)

    def _set_reading(self, reading: bool) -> None:
        if self._fd is None or self._loop is None or self._client is None:
            return
        if reading and not self._reading and not self._paused:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True
            if self._client.buffered():  # bytes read ahead before a pause: the socket may stay quiet
                self._loop.call_soon(self._read_ready)
        elif not reading and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _read_ready(self) -> None:
        """Read packets until paho's socket buffer (and TLS's) is empty: a readable socket wakes us only once.

        paho's ``loop_read`` handles one packet per call; the buffer may hold hundreds. At most ``_READ_TURN_S``
        per turn, so a flood never starves the rest of the loop (the writer, the flush loop, commands); the next
        turn goes on, the fd being ready or not. A count of packets was no bound: 1,000 batched payloads of 50
        samples took 80 ms to decode, and the writer waited several such turns for its wake-up.
        """
        client = self._client
        if client is None:
            return
        deadline = time.perf_counter() + _READ_TURN_S
        while True:
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client is not client:
                return
            if self._paused or not client.buffered():
                return
            if time.perf_counter() >= deadline:
                break
        if self._loop is not None:
            self._loop.call_soon(self._read_ready)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        self._reading = False

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._sync_writer)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._sync_writer)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        code = reason.value if hasattr(reason, "value") else int(reason)
        ok = code == 0
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((ok, code))
        if not ok:
            return
        self.stats["connects"] += 1
        self.unacked = 0
        self.connected.set()
        session_present = bool(getattr(flags, "session_present", False))
        if self._subscriptions:
            client.subscribe(self._subscriptions)
        if self.on_connect_cb is not None:
            self.on_connect_cb(session_present)
        log.info("MQTT connected to %s:%s as %s (MQTT %s, session %s)", self.url.host, self.url.port,
                 self.client_id, "5" if self.version == 5 else "3.1.1",
                 "resumed" if session_present else "new")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._on_socket_close(client, userdata, None)
        for fut in [*self._pubacks.values(), *self._subacks.values()]:
            if not fut.done():
                fut.set_exception(ConnectionError("MQTT connection lost before the broker acknowledged"))
        self._pubacks.clear()
        self._subacks.clear()
        if was_connected:
            self.stats["disconnects"] += 1
            if self._closing:
                log.info("MQTT disconnected from %s:%s", self.url.host, self.url.port)
            else:
                log.warning("MQTT connection to %s:%s lost (%s)", self.url.host, self.url.port, reason)
        if not self._closing and was_connected and self._loop is not None:
            self._tasks.append(self._loop.create_task(self._reconnect(), name=f"mqtt-reconnect-{self.client_id}"))

    def _on_message(self, msg: Any) -> None:
        self.stats["received"] += 1
        if msg.qos > 0:
            self.unacked += 1
            limit = self.max_inflight if self.version == 4 else self.max_inflight + 1
            if self.unacked >= limit:
                # MQTT 3.1.1 has no Receive Maximum, and a broker may not honour it (mosquitto 2.0 with
                # max_inflight_messages 0): stop reading, TCP pushes back, the broker keeps the rest queued.
                if not self._flow_paused:
                    self.stats["flow_pauses"] += 1
                self.pause(True)
        self.on_message(msg)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is None or fut.done():
            return
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            fut.set_exception(MqttConnectError(f"subscription refused: {failed[0]}"))
        else:
            fut.set_result(None)

    # -- operations --------------------------------------------------------------------------------------

    def pause(self, paused: bool) -> None:
        """Stop (or restart) reading for flow control; unacknowledged messages then stay queued at the broker."""
        self._flow_paused = paused
        self._update_reading()

    def hold(self, held: bool) -> None:
        """Stop (or restart) reading because the consumer has enough on its hands (the driver's unflushed queue).

        Independent of flow control: reading resumes only when neither holds it back.
        """
        self._held = held
        self._update_reading()

    def _update_reading(self) -> None:
        self._paused = self._flow_paused or self._held or self._reading_stopped
        self._set_reading(not self._paused)

    def stop_reading(self) -> None:
        """Read nothing more until ``stop()``, whatever gets acknowledged meanwhile (the driver's shutdown)."""
        self._reading_stopped = True
        self._update_reading()

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received QoS 1 message (PUBACK) once its data is durable."""
        if qos == 0 or self._client is None:
            return
        self._client.ack(mid, qos)
        self._acked(1)

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge many QoS 1 messages at once (one write): the driver's path after a commit."""
        if self._client is None or not mids:
            return
        self._acked(self._client.ack_many(mids))

    def _acked(self, count: int) -> None:
        self.stats["acked"] += count
        self.unacked = max(0, self.unacked - count)
        if self._flow_paused and self.unacked < self.max_inflight // 2:
            self.pause(False)

    async def subscribe(self, topics: list[str], qos: int = 1, timeout_s: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK; kept and renewed on every reconnect."""
        assert self._client is not None and self._loop is not None
        wanted = [(t, qos) for t in topics]
        self._subscriptions += wanted
        rc, mid = self._client.subscribe(wanted)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectError(f"subscribe failed: {mqtt.error_string(rc)}")
        fut = self._subacks[mid] = self._loop.create_future()
        await asyncio.wait_for(fut, timeout_s)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      timeout_s: float = 10.0) -> None:
        """Publish and, for QoS 1, wait until the broker has it (PUBACK)."""
        assert self._client is not None and self._loop is not None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.stats["published"] += 1
        if qos == 0 or info.is_published():
            return
        fut = self._pubacks[info.mid] = self._loop.create_future()
        await asyncio.wait_for(fut, timeout_s)

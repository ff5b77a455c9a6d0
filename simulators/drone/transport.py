"""Byte transports for one drone: UDP (udpout/udpin) and a reconnecting TCP client, all non-blocking asyncio.

URLs use pymavlink's connection-string spelling so the same string works for the simulator and mavproxy:
  udpout:HOST:PORT  one UDP socket per drone sending to HOST:PORT; replies are read on that socket
  udpin:HOST:PORT   the drone listens on PORT (+ its fleet index) and answers whoever spoke last
  udp:HOST:PORT     same as udpin (pymavlink's meaning)
  tcp:HOST:PORT     each drone is a TCP client of HOST:PORT and reconnects when the connection drops
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

BytesHandler = Callable[[bytes], None]
TCP_MAX_BUFFERED_BYTES = 256 * 1024  # beyond this, telemetry is dropped rather than queued forever


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # "udpout" | "udpin" | "tcp"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """Parse a MAVLink connection string such as 'udpout:127.0.0.1:14550'."""
    try:
        kind, rest = url.split(":", 1)
        host, port_text = rest.rsplit(":", 1)
        port = int(port_text)
    except ValueError as exc:
        raise ValueError(f"expected KIND:HOST:PORT, got {url!r}") from exc
    kind = kind.lower()
    if kind == "udp":
        kind = "udpin"
    if kind not in ("udpout", "udpin", "tcp"):
        raise ValueError(f"unsupported connection kind {kind!r} in {url!r} (udpout, udpin, tcp)")
    if not (0 if kind == "udpin" else 1) <= port < 65536:  # udpin:HOST:0 picks a free port
        raise ValueError(f"bad port in {url!r}")
    return Endpoint(kind, host.strip("[]") or "0.0.0.0", port)


class Transport:
    """Base class: start() opens, send() never blocks (drops when it cannot send), close() releases."""

    async def start(self, on_bytes: BytesHandler) -> None:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    @property
    def local_address(self) -> tuple[str, int] | None:
        return None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while nobody listens yet: normal for udpout, keep sending.
        pass


class _DatagramTransport(Transport):
    """What both UDP transports share: one asyncio datagram transport, closed and named the same way."""

    _transport: asyncio.DatagramTransport | None = None

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port


class UdpOutTransport(_DatagramTransport):
    def __init__(self, host: str, port: int) -> None:
        self._remote = (host, port)
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, on_bytes: BytesHandler) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(lambda data, _addr: on_bytes(data)), remote_addr=self._remote
        )

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data)

    @property
    def connected(self) -> bool:
        return self._transport is not None


class UdpInTransport(_DatagramTransport):
    def __init__(self, host: str, port: int) -> None:
        self._local = (host, port)
        self._transport: asyncio.DatagramTransport | None = None
        self._peer: tuple[str, int] | None = None

    async def start(self, on_bytes: BytesHandler) -> None:
        def on_datagram(data: bytes, addr: tuple[str, int]) -> None:
            self._peer = addr
            on_bytes(data)

        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(on_datagram), local_addr=self._local
        )

    def send(self, data: bytes) -> None:
        if self._transport is not None and self._peer is not None and not self._transport.is_closing():
            self._transport.sendto(data, self._peer)

    @property
    def connected(self) -> bool:
        return self._peer is not None


class TcpClientTransport(Transport):
    """TCP client that keeps reconnecting (wall-clock back-off: the server is real, not simulated)."""

    def __init__(self, host: str, port: int, retry_s: float = 0.5, max_retry_s: float = 5.0) -> None:
        self._remote = (host, port)
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.connections = 0
        self.on_reconnect: Callable[[], None] | None = None

    async def start(self, on_bytes: BytesHandler) -> None:
        self._task = asyncio.create_task(self._run(on_bytes), name=f"tcp-client-{self._remote}")

    async def _run(self, on_bytes: BytesHandler) -> None:
        delay_s = self._retry_s
        while True:
            try:
                reader, writer = await asyncio.open_connection(*self._remote)
            except OSError:
                await asyncio.sleep(delay_s)
                delay_s = min(self._max_retry_s, delay_s * 2)
                continue
            delay_s = self._retry_s
            self._writer = writer
            self.connections += 1
            if self.on_reconnect is not None:
                self.on_reconnect()
            try:
                while data := await reader.read(65536):
                    on_bytes(data)
            except OSError:
                pass
            finally:
                self._writer = None
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(delay_s)

    def send(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > TCP_MAX_BUFFERED_BYTES:
            return
        writer.write(data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._writer is None:
            return None
        host, port = self._writer.get_extra_info("sockname")[:2]
        return host, port


def make_transport(endpoint: Endpoint, index: int = 0) -> Transport:
    """Transport for the index-th drone of a fleet (udpin drones listen on consecutive ports)."""
    if endpoint.kind == "udpout":
        return UdpOutTransport(endpoint.host, endpoint.port)
    if endpoint.kind == "udpin":
        return UdpInTransport(endpoint.host, endpoint.port + index)
    return TcpClientTransport(endpoint.host, endpoint.port)

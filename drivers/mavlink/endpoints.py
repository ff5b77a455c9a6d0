"""MAVLink transports on asyncio, named by the URLs MAVLink tools use.

``udpin:0.0.0.0:14550`` listens (drones or a router send to us; we answer each peer where it was last heard
from), ``udpout:host:port`` sends to one peer, ``tcp:host:port`` is a reconnecting client, ``tcpin:0.0.0.0:5760``
a server for several clients, ``serial:/dev/ttyUSB0:57600`` a serial port (termios, no extra dependency).

No thread per link, no blocking receive loop: UDP sockets are drained with ``loop.add_reader`` until they would
block (asyncio's own datagram transport reads one datagram per loop iteration, which caps a busy link at the
loop's iteration rate), streams use asyncio's transports. Every received chunk is handed to ``on_data`` with the
``Peer`` it came from; ``Peer.send`` answers that peer on the same link.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Endpoint", "EndpointError", "Peer", "open_endpoint", "parse_url"]

log = logging.getLogger(__name__)

#: Large receive buffers absorb bursts (a fleet's worth of frames) while the pipeline catches up.
_RCVBUF_BYTES = 32 << 20


class EndpointError(ValueError):
    """An endpoint URL is malformed or cannot be opened."""


@dataclass(frozen=True, slots=True)
class EndpointUrl:
    scheme: str
    host: str
    port: int
    device: str = ""
    baud: int = 0

    def __str__(self) -> str:
        if self.scheme == "serial":
            return f"serial:{self.device}:{self.baud}"
        return f"{self.scheme}:{self.host}:{self.port}"


def parse_url(url: str) -> EndpointUrl:
    """``udpin:0.0.0.0:14550`` -> EndpointUrl; raises EndpointError with the expected form."""
    scheme, _, rest = url.partition(":")
    scheme = {"udp": "udpin"}.get(scheme, scheme)
    try:
        if scheme == "serial":
            device, _, baud = rest.rpartition(":")
            if not device:
                device, baud = rest, "57600"
            return EndpointUrl(scheme, "", 0, device, int(baud))
        host, _, port = rest.rpartition(":")
        if scheme not in {"udpin", "udpout", "tcp", "tcpin"} or not host or not port:
            raise ValueError
        return EndpointUrl(scheme, host.strip("[]"), int(port))
    except ValueError:
        raise EndpointError(
            f"bad MAVLink endpoint {url!r}: expected udpin:HOST:PORT, udpout:HOST:PORT, tcp:HOST:PORT, "
            "tcpin:HOST:PORT or serial:DEVICE:BAUD"
        ) from None


@dataclass(eq=False)
class Peer:
    """One remote end of a link: a UDP address, a TCP connection, a serial port."""

    endpoint: Endpoint
    address: Any
    _write: Callable[[bytes], None]
    stream: bool = False
    alive: bool = True

    def send(self, data: bytes) -> None:
        if not self.alive:
            return
        try:
            self._write(data)
            self.endpoint.stats["tx_frames"] += 1
            self.endpoint.stats["tx_bytes"] += len(data)
        except OSError as exc:
            self.endpoint.stats["tx_errors"] += 1
            log.debug("send to %s on %s failed: %s", self.address, self.endpoint.url, exc)

    def __repr__(self) -> str:
        return f"Peer({self.endpoint.url}, {self.address})"


OnData = Callable[[bytes, Peer], None]


@dataclass(eq=False)
class Endpoint:
    """A link: started with ``on_data``; ``peers`` are the remote ends seen so far (for broadcasts)."""

    url: EndpointUrl
    on_data: OnData
    peers: dict[Any, Peer] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {
        "rx_chunks": 0, "rx_bytes": 0, "tx_frames": 0, "tx_bytes": 0, "tx_errors": 0, "connects": 0})
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    local_address: Any = None
    _resume: asyncio.Event = field(default_factory=asyncio.Event)
    _pause_hooks: list[Callable[[bool], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._resume.set()

    def set_paused(self, paused: bool) -> None:
        """Stop (or restart) reading: UDP leaves datagrams in the kernel buffer, TCP pushes back to the peer."""
        if paused:
            self._resume.clear()
        else:
            self._resume.set()
        for hook in self._pause_hooks:
            hook(paused)

    @property
    def name(self) -> str:
        return str(self.url)

    def broadcast(self, data: bytes) -> None:
        for peer in list(self.peers.values()):
            peer.send(data)

    def _received(self, data: bytes, peer: Peer) -> None:
        self.stats["rx_chunks"] += 1
        self.stats["rx_bytes"] += len(data)
        try:
            self.on_data(data, peer)
        except Exception:  # a bug in a handler must not kill the link
            log.exception("MAVLink handler failed on %s", self.url)

    async def start(self) -> None:
        scheme = self.url.scheme
        if scheme in ("udpin", "udpout"):
            self._start_udp()
        elif scheme == "tcp":
            self._tasks.append(asyncio.create_task(self._tcp_client(), name=f"mavlink-{self.url}"))
        elif scheme == "tcpin":
            await self._start_tcp_server()
        elif scheme == "serial":
            self._start_serial()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        for peer in self.peers.values():
            peer.alive = False

    # -- UDP ---------------------------------------------------------------------------------------------

    def _start_udp(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.url.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, _RCVBUF_BYTES)
                break
        fixed_peer: Peer | None = None
        if self.url.scheme == "udpin":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.url.host, self.url.port))
            except OSError as exc:
                sock.close()
                raise EndpointError(f"cannot listen on {self.url}: {exc}") from exc
        else:
            sock.bind(("", 0))
            address = (self.url.host, self.url.port)
            fixed_peer = Peer(self, address, lambda data: sock.sendto(data, address))
            self.peers[address] = fixed_peer
        self.local_address = sock.getsockname()
        recvfrom = sock.recvfrom
        peers = self.peers
        received = self._received

        def drain() -> None:
            # Read until the socket would block: one wake-up serves a whole burst of datagrams.
            for _ in range(4096):
                try:
                    data, address = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # e.g. ICMP port unreachable reported on udpout
                    if exc.errno not in (errno.ECONNREFUSED,):
                        log.debug("recv on %s: %s", self.url, exc)
                    return
                peer = fixed_peer or peers.get(address)
                if peer is None:
                    peer = peers[address] = Peer(self, address, _udp_sender(sock, address))
                received(data, peer)

        loop.add_reader(sock.fileno(), drain)
        self._closers.append(sock.close)
        self._closers.append(lambda: loop.remove_reader(sock.fileno()))
        self._pause_hooks.append(
            lambda paused: loop.remove_reader(sock.fileno()) if paused else loop.add_reader(sock.fileno(), drain))

    # -- TCP ---------------------------------------------------------------------------------------------

    async def _tcp_client(self) -> None:
        """Connect, read until the connection drops, reconnect with a capped backoff."""
        backoff = 0.2
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.url.host, self.url.port)
            except OSError as exc:
                log.debug("tcp %s: %s; retrying in %.1fs", self.url, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            self.stats["connects"] += 1
            await self._serve_stream(reader, writer)

    async def _start_tcp_server(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.stats["connects"] += 1
            await self._serve_stream(reader, writer)

        try:
            server = await asyncio.start_server(handle, self.url.host, self.url.port)
        except OSError as exc:
            raise EndpointError(f"cannot listen on {self.url}: {exc}") from exc
        self.local_address = server.sockets[0].getsockname()
        self._closers.append(server.close)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = Peer(self, address, writer.write, stream=True)
        self.peers[address] = peer
        try:
            while data := await reader.read(65536):
                self._received(data, peer)
                await self._resume.wait()
        except (ConnectionError, OSError) as exc:
            log.debug("stream %s on %s ended: %s", address, self.url, exc)
        finally:
            peer.alive = False
            self.peers.pop(address, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- serial ------------------------------------------------------------------------------------------

    def _start_serial(self) -> None:
        import termios
        import tty

        try:
            fd = os.open(self.url.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise EndpointError(f"cannot open {self.url.device}: {exc}") from exc
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{self.url.baud}", None)
            if speed is None:
                raise EndpointError(f"unsupported baud rate {self.url.baud} for {self.url.device}")
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except termios.error:
            log.warning("%s is not a terminal; using it as a plain byte stream", self.url.device)
        loop = asyncio.get_running_loop()
        peer = Peer(self, self.url.device, lambda data: _write_all(fd, data), stream=True)
        self.peers[self.url.device] = peer

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            if data:
                self._received(data, peer)

        loop.add_reader(fd, readable)
        self._closers.append(lambda: os.close(fd))
        self._closers.append(lambda: loop.remove_reader(fd))


def _udp_sender(sock: socket.socket, address: Any) -> Callable[[bytes], None]:
    return lambda data: sock.sendto(data, address)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[written:]


async def open_endpoint(url: str, on_data: OnData) -> Endpoint:
    endpoint = Endpoint(parse_url(url), on_data)
    await endpoint.start()
    return endpoint

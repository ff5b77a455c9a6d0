"""MAVLink transports on asyncio, named by the URLs MAVLink tools use.

``udpin:0.0.0.0:14550`` listens (drones or a router send to us; we answer each peer where it was last heard
from), ``udpout:host:port`` sends to one peer, ``tcp:host:port`` is a reconnecting client, ``tcpin:0.0.0.0:5760``
a server for several clients, ``serial:/dev/ttyUSB0:57600`` a serial port (termios, no extra dependency).

No thread per link, no blocking receive loop: UDP sockets are drained with ``loop.add_reader`` until they would
block (asyncio's own datagram transport reads one datagram per loop iteration, which caps a busy link at the
loop's iteration rate), streams use asyncio's transports. Every received chunk is handed to ``on_data`` with the
``Peer`` it came from; ``Peer.send`` answers that peer on the same link. A UDP link given ``on_datagrams`` hands
over each drained burst in one call instead (at most ``MAX_BURST`` datagrams, in arrival order), so per-datagram
work that can be shared (a clock reading, lookups, counters) is done once per burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import mmap
import os
import socket
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_BURST", "Endpoint", "EndpointError", "Peer", "open_endpoint", "parse_url"]

log = logging.getLogger(__name__)

#: Large receive buffers absorb bursts (a fleet's worth of frames) while the pipeline catches up.
_RCVBUF_BYTES = 32 << 20
#: SO_RCVBUFFORCE (Linux; Python's socket module does not name it) may pass net.core.rmem_max, SO_RCVBUF may not.
_SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
#: Most datagrams read in one wake-up, so one busy link cannot starve the event loop's other work.
MAX_BURST = 4096


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
#: A burst of datagrams drained from one UDP socket, in arrival order, and the peer each came from (parallel
#: lists rather than pairs: a tuple per datagram would be one more object for the garbage collector to track).
OnDatagrams = Callable[[list[bytes], list[Peer]], None]


@dataclass(eq=False)
class Endpoint:
    """A link: started with ``on_data``; ``peers`` are the remote ends seen so far (for broadcasts)."""

    url: EndpointUrl
    on_data: OnData
    on_datagrams: OnDatagrams | None = None
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

    def _each_datagram(self, datagrams: list[bytes], peers: list[Peer]) -> None:
        """The burst handler of a link without ``on_datagrams``: ``on_data`` for each datagram."""
        on_data = self.on_data
        for data, peer in zip(datagrams, peers, strict=True):
            try:
                on_data(data, peer)
            except Exception:  # one bad datagram must not cost the rest of the burst
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
        for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
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
        reader: _RecvFrom | _RecvMmsg = _RecvMmsg.create(sock) or _RecvFrom(sock)
        peers = self.peers
        by_source: dict[Hashable, Peer] = {}  # the reader's source key (address or raw sockaddr) -> peer
        stats = self.stats
        handle = self.on_datagrams or self._each_datagram

        def peer_from(source: Hashable) -> Peer:
            if fixed_peer is not None:
                peer = fixed_peer
            else:
                address = reader.address(source)
                peer = peers.get(address) or Peer(self, address, _udp_sender(sock, address))
                peers[address] = peer
            by_source[source] = peer
            return peer

        def drain() -> None:
            # Read until the socket would block: one wake-up serves a whole burst of datagrams, handed over at once.
            datagrams: list[bytes] = []
            sources: list[Hashable] = []
            try:
                reader.read(datagrams, sources, MAX_BURST)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:  # e.g. ICMP port unreachable reported on udpout
                if exc.errno not in (errno.ECONNREFUSED,):
                    log.debug("recv on %s: %s", self.url, exc)
            if not datagrams:
                return
            senders = [by_source.get(source) or peer_from(source) for source in sources]
            stats["rx_chunks"] += len(datagrams)
            stats["rx_bytes"] += sum(map(len, datagrams))
            try:
                handle(datagrams, senders)
            except Exception:  # a bug in a handler must not kill the link
                log.exception("MAVLink handler failed on %s", self.url)

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


class _RecvFrom:
    """Reads a UDP socket with one recvfrom(2) per datagram: the portable way. Sources are addresses."""

    def __init__(self, sock: socket.socket) -> None:
        self._recvfrom = sock.recvfrom

    def read(self, datagrams: list[bytes], sources: list[Hashable], limit: int) -> None:
        """Append up to ``limit`` datagrams and their sources; raises BlockingIOError once the socket is empty."""
        recvfrom = self._recvfrom
        add_datagram, add_source = datagrams.append, sources.append
        for _ in range(limit):
            data, address = recvfrom(65535)
            add_datagram(data)
            add_source(address)

    @staticmethod
    def address(source: Hashable) -> Any:
        return source


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32)]


class _RecvMmsg:
    """Reads a UDP socket with recvmmsg(2) (Linux, through ctypes): up to ``SLOTS`` datagrams per system call.

    Python's socket module has no recvmmsg, and a recvfrom per datagram was the largest single cost of a busy
    link: a system call, plus a str and a tuple for the source address of every datagram. Here a source is the
    raw sockaddr (as an int for IPv4, bytes for IPv6), decoded into an address only for a peer not seen before.
    :meth:`create` returns None where recvmmsg is not available; the endpoint then reads with
    :class:`_RecvFrom`, with the same results.
    """

    SLOTS = 64
    SLOT_BYTES = 65536  # more than the largest UDP payload: a datagram is never cut
    _MSG_DONTWAIT = 0x40

    def __init__(self, sock: socket.socket, recvmmsg: Any) -> None:
        self._fd = sock.fileno()
        self._v6 = sock.family == socket.AF_INET6
        # The kernel fills exactly one sockaddr of the socket's family per datagram: sockaddr_in6 or sockaddr_in.
        self._name_bytes = 28 if self._v6 else 16
        self._recvmmsg = recvmmsg
        slots = self.SLOTS
        # Anonymous memory: pages are only backed once the kernel writes into them (the start of each slot).
        self._data = mmap.mmap(-1, slots * self.SLOT_BYTES)
        self._names = bytearray(slots * self._name_bytes)
        self._iovecs = (_IoVec * slots)()
        self._msgs = (_MMsgHdr * slots)()
        # Held, not just their addresses: while exported, the buffers cannot be closed or resized under the kernel.
        self._exports = ((ctypes.c_char * len(self._data)).from_buffer(self._data),
                         (ctypes.c_char * len(self._names)).from_buffer(self._names))
        data, names = (ctypes.addressof(export) for export in self._exports)
        for i in range(slots):
            self._iovecs[i].iov_base = data + i * self.SLOT_BYTES
            self._iovecs[i].iov_len = self.SLOT_BYTES
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = names + i * self._name_bytes
            hdr.msg_namelen = self._name_bytes
            hdr.msg_iov = ctypes.pointer(self._iovecs[i])
            hdr.msg_iovlen = 1
        # The datagram lengths the kernel writes into the headers, as a strided view of 32-bit words.
        words = memoryview(self._msgs).cast("B").cast("I")  # type: ignore[arg-type]
        self._lengths = words[_MMsgHdr.msg_len.offset // 4 :: ctypes.sizeof(_MMsgHdr) // 4]
        self._starts = range(0, slots * self.SLOT_BYTES, self.SLOT_BYTES)

    @classmethod
    def create(cls, sock: socket.socket) -> _RecvMmsg | None:
        if not sys.platform.startswith("linux") or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            recvmmsg = ctypes.CDLL(None, use_errno=True).recvmmsg
        except (OSError, AttributeError):
            return None
        recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        recvmmsg.restype = ctypes.c_int
        return cls(sock, recvmmsg)

    def read(self, datagrams: list[bytes], sources: list[Hashable], limit: int) -> None:
        """Append up to ``limit`` datagrams and their sources; raises OSError (BlockingIOError when empty) only
        if nothing more could be read, and returns early once a call finds fewer datagrams than it asked for."""
        data = memoryview(self._data)
        names = memoryview(self._names)
        first_words = names.cast("Q")  # sockaddr_in: family, port and IPv4 address are its first 8 bytes
        lengths, starts, name_bytes = self._lengths, self._starts, self._name_bytes
        starts_of_names = range(0, self.SLOTS * name_bytes, name_bytes)
        while limit > 0:
            want = min(limit, self.SLOTS)
            got = self._recvmmsg(self._fd, self._msgs, want, self._MSG_DONTWAIT, None)
            if got < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))  # BlockingIOError for EAGAIN
            datagrams.extend([data[at : at + n].tobytes() for at, n in zip(starts[:got], lengths[:got].tolist(),
                                                                             strict=True)])
            if self._v6:
                sources.extend([names[at : at + name_bytes].tobytes() for at in starts_of_names[:got]])
            else:
                sources.extend(first_words[: 2 * got : 2].tolist())
            if got < want:
                return
            limit -= got

    def address(self, source: Hashable) -> Any:
        """The address tuple ``recvfrom`` would give for a source."""
        if isinstance(source, bytes):  # sockaddr_in6
            host = socket.inet_ntop(socket.AF_INET6, source[8:24])
            return (host, int.from_bytes(source[2:4], "big"), int.from_bytes(source[4:8], "big"),
                    int.from_bytes(source[24:28], sys.byteorder))
        assert isinstance(source, int)
        raw = source.to_bytes(8, sys.byteorder)  # sockaddr_in up to its zero padding
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[written:]


async def open_endpoint(url: str, on_data: OnData, on_datagrams: OnDatagrams | None = None) -> Endpoint:
    endpoint = Endpoint(parse_url(url), on_data, on_datagrams)
    await endpoint.start()
    return endpoint

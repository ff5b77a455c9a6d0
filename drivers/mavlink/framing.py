"""Streaming MAVLink 1/2 frame splitter: the gateway's fast path in front of pymavlink.

pymavlink's parser builds a full message object for every frame and walks its buffer in
small steps; at fleet rates that is the gateway's bottleneck. This module only *frames*:
it finds complete frames in a byte stream, checks their CRC (CRC-16/MCRF4XX with the
message's CRC_EXTRA from pymavlink's ``ardupilotmega`` dialect, which includes
``common``), pads MAVLink 2 zero-truncated payloads back to full length and hands out
:class:`Frame` objects. Decoding is separate (:mod:`drivers.mavlink.fastdecode` for hot
messages, :func:`decode_with_pymavlink` for everything else), so frames can also be
forwarded unchanged (``Frame.raw``) without being decoded.

Resynchronisation follows a robust parser: bytes that cannot start a frame are skipped
up to the next magic byte (0xFE or 0xFD); a candidate with a bad CRC or unknown
incompatibility flags costs only its magic byte, and scanning resumes right after it,
so a genuine frame hidden behind a false magic byte is still found. Memory is bounded:
at most one incomplete candidate (<= 280 bytes) is kept between calls.

Known limit, shared with pymavlink: the CRC does not cover the 13-byte signature block, so
a signed frame cut inside its signature on a byte stream still passes and takes its last
bytes from whatever follows (signature verification then rejects it). UDP is immune when
datagrams are fed with ``final=True``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from fastcrc.crc16 import mcrf4xx
from pymavlink.dialects.v20 import ardupilotmega as dialect

__all__ = [
    "MAGIC_V1",
    "MAGIC_V2",
    "MAX_FRAME_LEN",
    "Frame",
    "FrameSplitter",
    "FrameStats",
    "decode_with_pymavlink",
    "message_name",
]

MAGIC_V1 = 0xFE
MAGIC_V2 = 0xFD
_HEADER_V2 = 10
_SIGNATURE_LEN = 13
_IFLAG_SIGNED = 0x01
#: Longest possible frame: MAVLink 2 header + 255-byte payload + CRC + signature.
MAX_FRAME_LEN = _HEADER_V2 + 255 + 2 + _SIGNATURE_LEN

# msgid -> (crc_extra, full payload length incl. MAVLink 2 extensions), from pymavlink.
_MSG_INFO: dict[int, tuple[int, int]] = {
    msgid: (cls.crc_extra, cls.unpacker.size) for msgid, cls in dialect.mavlink_map.items()
}
_ZEROS = [bytes(n) for n in range(256)]
_info_get = _MSG_INFO.get
_search_magic = re.compile(b"[\xfd\xfe]").search
_HDR_V1 = struct.Struct("<xBBBBB").unpack_from  # len, seq, sysid, compid, msgid
_HDR_V2 = struct.Struct("<xBBxBBBHB").unpack_from  # len, incompat, seq, sysid, compid, id lo16, id hi8


def _crc_byte_table() -> list[int]:
    """Table for folding one byte (the CRC_EXTRA) into a running MCRF4XX CRC."""
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_byte_table()


@dataclass(slots=True)
class Frame:
    """One CRC-valid MAVLink frame.

    ``payload`` is always the dialect's full payload length (MAVLink 2 zero-truncation
    undone, MAVLink 1 frames without extensions zero-padded, over-long payloads cut),
    so a ``struct`` unpack never fails. ``raw`` is the frame exactly as received,
    signature included, for forwarding and signature checks.
    """

    msgid: int
    sysid: int
    compid: int
    seq: int
    payload: bytes
    raw: bytes

    @property
    def version(self) -> int:
        """1 or 2, from the magic byte."""
        return 2 if self.raw[0] == MAGIC_V2 else 1

    @property
    def signed(self) -> bool:
        """True when the frame carries a MAVLink 2 signature block (not verified here)."""
        raw = self.raw
        return raw[0] == MAGIC_V2 and raw[2] & _IFLAG_SIGNED == _IFLAG_SIGNED

    @property
    def link_id(self) -> int | None:
        """Signature link id, or None for an unsigned frame."""
        return self.raw[-13] if self.signed else None

    @property
    def timestamp(self) -> int | None:
        """Signature timestamp (10 µs units since 2015-01-01 UTC), or None when unsigned."""
        return int.from_bytes(self.raw[-12:-6], "little") if self.signed else None

    @property
    def signature(self) -> bytes | None:
        """The 6-byte signature, or None when unsigned."""
        return self.raw[-6:] if self.signed else None

    @property
    def signed_data(self) -> bytes | None:
        """Bytes the signature covers: sha256(secret_key + signed_data)[:6] == signature.

        That is header, payload, CRC, link id and timestamp, as in pymavlink's check.
        """
        return self.raw[:-6] if self.signed else None

    @property
    def name(self) -> str:
        """Message name from the dialect, e.g. ``GLOBAL_POSITION_INT``."""
        return message_name(self.msgid)


@dataclass(slots=True)
class FrameStats:
    """Counters of one splitter; ``bytes`` counts every byte fed, the others explain the rest."""

    frames: int = 0  #: valid frames returned
    bytes: int = 0  #: bytes fed in
    bad_crc: int = 0  #: candidates rejected for a CRC mismatch (each skips one magic byte)
    bad_flags: int = 0  #: MAVLink 2 candidates with unknown incompat flags (each skips one byte)
    unknown_id: int = 0  #: well-delimited candidates whose msgid the dialect lacks (bytes go to junk)
    junk_bytes: int = 0  #: bytes not returned in a frame: garbage, rejected candidates, unknown frames


class FrameSplitter:
    """Splits one byte stream (or a sequence of datagrams) into valid frames.

    Use one splitter per stream: a TCP or serial connection delivers arbitrary chunks
    and an incomplete frame at the end of a chunk is kept until the next :meth:`feed`.
    """

    __slots__ = ("_rest", "stats")

    def __init__(self) -> None:
        self._rest = b""
        self.stats = FrameStats()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._rest)

    def feed(self, data: bytes | bytearray | memoryview, final: bool = False) -> list[Frame]:
        """Return the complete valid frames in ``data`` (plus any held-back remainder), in order.

        ``final=True`` says no more bytes will follow (end of file, closed connection, or
        a UDP datagram, since MAVLink frames never span datagrams): an incomplete
        candidate at the end is then treated as garbage and scanning goes on past it,
        instead of being kept. Never raises on malformed input.
        """
        # Hot loop: literals instead of named constants and no helper calls, because every
        # bytecode counts at several hundred thousand frames per second.
        if type(data) is not bytes:
            data = bytes(data)
        rest = self._rest
        buf = rest + data if rest else data
        n = len(buf)
        pos = 0
        out: list[Frame] = []
        junk = bad_crc = bad_flags = unknown = 0

        while pos < n:
            magic = buf[pos]
            if magic == 0xFD:  # MAVLink 2
                if pos + 12 > n:
                    if not final:
                        break
                    junk += 1
                    pos += 1
                    continue
                length, incompat, seq, sysid, compid, id_lo, id_hi = _HDR_V2(buf, pos)
                payload_start = pos + 10
                payload_end = payload_start + length
                end = payload_end + 2
                if incompat:
                    if incompat != 0x01:  # only "signed" is defined
                        bad_flags += 1
                        junk += 1
                        pos += 1
                        continue
                    end += 13  # signature block
                msgid = id_lo | id_hi << 16
            elif magic == 0xFE:  # MAVLink 1
                if pos + 8 > n:
                    if not final:
                        break
                    junk += 1
                    pos += 1
                    continue
                length, seq, sysid, compid, msgid = _HDR_V1(buf, pos)
                payload_start = pos + 6
                payload_end = payload_start + length
                end = payload_end + 2
            else:
                match = _search_magic(buf, pos + 1)
                nxt = match.start() if match is not None else n
                junk += nxt - pos
                pos = nxt
                continue

            if end > n:
                if not final:
                    break
                junk += 1
                pos += 1
                continue
            info = _info_get(msgid)
            if info is None:
                # Without CRC_EXTRA the CRC cannot be checked, so skipping the claimed length
                # could swallow real frames behind a false magic byte: skip only the magic
                # byte, and count an unknown message only when the candidate is well
                # delimited (followed by a magic byte, or at the very end of the stream).
                if end == n:
                    if not final:
                        break
                    unknown += 1
                elif buf[end] == 0xFD or buf[end] == 0xFE:
                    unknown += 1
                junk += 1
                pos += 1
                continue
            crc = mcrf4xx(buf[pos + 1 : payload_end])
            crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ info[0]) & 0xFF]  # fold in CRC_EXTRA
            if crc != buf[payload_end] | buf[payload_end + 1] << 8:
                bad_crc += 1
                junk += 1
                pos += 1
                continue
            size = info[1]
            if length == size:
                payload = buf[payload_start:payload_end]
            elif length < size:
                payload = buf[payload_start:payload_end] + _ZEROS[size - length]
            else:
                payload = buf[payload_start : payload_start + size]
            out.append(Frame(msgid, sysid, compid, seq, payload, buf[pos:end]))
            pos = end

        self._rest = buf[pos:] if pos < n else b""
        stats = self.stats
        stats.bytes += len(data)
        stats.frames += len(out)
        if junk:
            stats.junk_bytes += junk
            stats.bad_crc += bad_crc
            stats.bad_flags += bad_flags
            stats.unknown_id += unknown
        return out

    def feed_datagram(self, data: bytes) -> list[Frame]:
        """``feed(data, final=True)`` for one datagram, with UDP's common case first.

        A datagram that is exactly one unsigned MAVLink 2 frame of a known message with a good CRC is taken
        apart directly, without the scan; anything else goes through :meth:`feed`. Same frames, same counters.
        """
        n = len(data)
        if n >= 12 and data[0] == 0xFD and data[1] + 12 == n and not data[2] and not self._rest \
                and type(data) is bytes:
            length, _, seq, sysid, compid, id_lo, id_hi = _HDR_V2(data, 0)
            msgid = id_lo | id_hi << 16
            info = _info_get(msgid)
            if info is not None:
                crc = mcrf4xx(data[1 : n - 2])
                crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ info[0]) & 0xFF]
                if crc == data[n - 2] | data[n - 1] << 8:
                    size = info[1]
                    if length == size:
                        payload = data[10 : n - 2]
                    elif length < size:
                        payload = data[10 : n - 2] + _ZEROS[size - length]
                    else:
                        payload = data[10 : 10 + size]
                    stats = self.stats
                    stats.bytes += n
                    stats.frames += 1
                    return [Frame(msgid, sysid, compid, seq, payload, data)]
        return self.feed(data, True)

    def flush(self) -> list[Frame]:
        """End of stream: resolve the held-back remainder (see ``final`` in :meth:`feed`)."""
        return self.feed(b"", final=True)


def message_name(msgid: int) -> str:
    """Dialect name of ``msgid``, or ``UNKNOWN_<id>`` as pymavlink names it."""
    cls = dialect.mavlink_map.get(msgid)
    return cls.msgname if cls is not None else f"UNKNOWN_{msgid}"


_PYMAVLINK = dialect.MAVLink(None)


def decode_with_pymavlink(frame: Frame) -> dialect.MAVLink_message:
    """Decode a frame into pymavlink's own message object: the path for cold messages.

    Signatures are not checked (this instance has no key); ``get_signed()`` stays False.
    Raises pymavlink's ``MAVError`` only if the frame was not produced by the splitter.
    """
    return _PYMAVLINK.decode(bytearray(frame.raw))

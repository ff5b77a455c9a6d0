"""The MAVLink fast path must agree with pymavlink, frame for frame and field for field.

pymavlink is the reference: frames are built with its encoders, and what the splitter and
the fast decoders produce is compared with what pymavlink's own parser makes of the same
bytes. The real ArduCopter log (in ../shared, absent from a plain clone) checks the
splitter against pymavlink's robust log reader on real corruption.
"""

from __future__ import annotations

import collections
import hashlib
import math
import pickle
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymavlink.dialects.v10 import ardupilotmega as dialect_v1
from pymavlink.dialects.v20 import ardupilotmega as dialect

from drivers.mavlink.fastdecode import HOT_MESSAGES, decode_fast, decoder_for
from drivers.mavlink.framing import (
    MAX_FRAME_LEN,
    Frame,
    FrameSplitter,
    FrameStats,
    decode_with_pymavlink,
    message_name,
)
from drivers.mavlink.tlog import read_tlog

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED = PROJECT_ROOT / ".." / "shared"
TLOG = SHARED / "data" / "tlogs" / "arducopter_2015_flight.tlog"

_INT_RANGES = {
    "int8_t": (-(2**7), 2**7 - 1),
    "uint8_t": (0, 2**8 - 1),
    "int16_t": (-(2**15), 2**15 - 1),
    "uint16_t": (0, 2**16 - 1),
    "int32_t": (-(2**31), 2**31 - 1),
    "uint32_t": (0, 2**32 - 1),
    "int64_t": (-(2**63), 2**63 - 1),
    "uint64_t": (0, 2**64 - 1),
}
_SPECIAL_FLOATS = (0.0, -0.0, math.nan, math.inf, -math.inf, 1e-40, 3.4e38)


# --- building frames with pymavlink --------------------------------------------------------


def _random_value(ftype: str, rng: random.Random, zero: bool) -> Any:
    if ftype in ("float", "double"):
        if zero:
            return 0.0
        if rng.random() < 0.05:
            return rng.choice(_SPECIAL_FLOATS)
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.uniform(-1.0, 1.0)
    if ftype == "char":
        raise AssertionError("char arrays are handled by the caller")
    if zero:
        return 0
    lo, hi = _INT_RANGES[ftype]
    return rng.choice((lo, hi, 0, 1)) if rng.random() < 0.1 else rng.randint(lo, hi)


def random_fields(msgcls: type[dialect.MAVLink_message], rng: random.Random) -> dict[str, Any]:
    """Random in-range values; a random tail of the wire order is zero to exercise truncation."""
    zero_tail = set(msgcls.ordered_fieldnames[len(msgcls.ordered_fieldnames) - rng.randint(0, 4) :])
    fields: dict[str, Any] = {}
    for name, ftype in zip(msgcls.fieldnames, msgcls.fieldtypes, strict=True):
        wire = msgcls.ordered_fieldnames.index(name)
        count = msgcls.array_lengths[wire]
        zero = name in zero_tail or rng.random() < 0.15
        if ftype == "char":
            size = 0 if zero else rng.randint(0, count)
            alphabet = [*range(32, 127), *range(128, 256)] if rng.random() < 0.1 else range(32, 127)
            fields[name] = bytes(rng.choice(alphabet) for _ in range(size))
        elif count:
            fields[name] = [_random_value(ftype, rng, zero) for _ in range(count)]
        else:
            fields[name] = _random_value(ftype, rng, zero)
    return fields


def pack(
    msgcls: type[dialect.MAVLink_message],
    fields: dict[str, Any],
    *,
    variant: str,
    sysid: int = 1,
    compid: int = 1,
    seq: int = 0,
    rng: random.Random | None = None,
) -> bytes:
    """One frame. variant: v2, v2signed, v1 (pymavlink's v1: full payload), v1base (base fields only)."""
    if variant == "v1base":
        v1cls = dialect_v1.mavlink_map[msgcls.id]
        mav1 = dialect_v1.MAVLink(None, srcSystem=sysid, srcComponent=compid)
        mav1.seq = seq
        return v1cls(**{k: fields[k] for k in v1cls.fieldnames}).pack(mav1)
    mav = dialect.MAVLink(None, srcSystem=sysid, srcComponent=compid)
    mav.seq = seq
    if variant == "v2signed":
        rng = rng or random.Random(0)
        mav.signing.secret_key = rng.randbytes(32)
        mav.signing.sign_outgoing = True
        mav.signing.link_id = rng.randint(0, 255)
        mav.signing.timestamp = rng.randint(0, 2**48 - 2)
    return msgcls(**fields).pack(mav, force_mavlink1=variant == "v1")


def variants_for(msgid: int) -> tuple[str, ...]:
    if msgid > 255:
        return ("v2", "v2signed")
    if msgid in dialect_v1.mavlink_map:
        return ("v2", "v2signed", "v1", "v1base")
    return ("v2", "v2signed", "v1")


def pymavlink_parse(data: bytes) -> list[dialect.MAVLink_message]:
    mav = dialect.MAVLink(None)
    mav.robust_parsing = True
    return [m for m in (mav.parse_buffer(data) or []) if m.get_type() != "BAD_DATA"]


def chunks(data: bytes, rng: random.Random, max_size: int) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = rng.randint(1, max_size)
        yield data[pos : pos + size]
        pos += size


def split_all(data: bytes, pieces: Iterator[bytes] | None = None) -> tuple[list[Frame], FrameStats]:
    splitter = FrameSplitter()
    frames = []
    for piece in pieces if pieces is not None else [data]:
        frames += splitter.feed(piece)
    frames += splitter.flush()
    assert splitter.pending == 0
    return frames, splitter.stats


def same_value(ours: Any, theirs: Any) -> bool:
    """Equal value and type; NaN equals NaN, lists compare element by element."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(same_value, ours, theirs))
    if isinstance(ours, float):
        return struct.pack("<d", ours) == struct.pack("<d", theirs) or ours == theirs
    return bool(ours == theirs)


def assert_same_message(fast: Any, ref: dialect.MAVLink_message) -> None:
    assert fast.get_type() == ref.get_type()
    assert fast.get_msgId() == ref.get_msgId()
    for name in ref.get_fieldnames():
        ours, theirs = getattr(fast, name), getattr(ref, name)
        assert same_value(ours, theirs), f"{ref.get_type()}.{name}: {ours!r} != {theirs!r}"


def check_stream_against_pymavlink(stream: bytes, expected: int, rng: random.Random) -> None:
    """Split ``stream`` (in random chunks) and compare every frame with pymavlink's parse."""
    frames, stats = split_all(stream, chunks(stream, rng, 97))
    refs = pymavlink_parse(stream)
    assert len(frames) == len(refs) == expected
    assert stats.frames == expected and stats.junk_bytes == 0 and stats.bad_crc == 0
    for frame, ref in zip(frames, refs, strict=True):
        assert frame.msgid == ref.get_msgId()
        assert (frame.sysid, frame.compid, frame.seq) == (ref.get_srcSystem(), ref.get_srcComponent(), ref.get_seq())
        assert frame.raw == bytes(ref.get_msgbuf())
        assert len(frame.payload) == dialect.mavlink_map[frame.msgid].unpacker.size
        assert_same_message(decode_fast(frame.msgid, frame.payload), ref)


# --- (a) field-by-field equality with pymavlink ------------------------------------------


@pytest.mark.parametrize("name", HOT_MESSAGES)
def test_hot_messages_match_pymavlink(name: str) -> None:
    msgcls = getattr(dialect, f"MAVLink_{name.lower()}_message")
    rng = random.Random(name)
    variants = variants_for(msgcls.id)
    parts = []
    seen_variants: collections.Counter[str] = collections.Counter()
    truncated = 0
    for i in range(1200):
        variant = variants[i % len(variants)]
        raw = pack(
            msgcls,
            random_fields(msgcls, rng),
            variant=variant,
            sysid=rng.randint(1, 255),
            compid=rng.randint(0, 255),
            seq=i % 256,
            rng=rng,
        )
        seen_variants[variant] += 1
        if raw[0] == 0xFD and raw[1] < msgcls.unpacker.size:
            truncated += 1
        parts.append(raw)
    assert truncated > 100, "the generator must exercise MAVLink 2 zero truncation"
    check_stream_against_pymavlink(b"".join(parts), len(parts), rng)


def test_every_dialect_message_matches_pymavlink() -> None:
    """The decoders are generic: check each message of the dialect a few times."""
    rng = random.Random(7)
    parts = []
    for msgid, msgcls in sorted(dialect.mavlink_map.items()):
        for variant in variants_for(msgid):
            for _ in range(3):
                parts.append(pack(msgcls, random_fields(msgcls, rng), variant=variant, rng=rng))
    check_stream_against_pymavlink(b"".join(parts), len(parts), rng)


def test_fast_tuple_shape() -> None:
    msgcls = dialect.MAVLink_battery_status_message
    decoded = decode_fast(msgcls.id, bytes(msgcls.unpacker.size))
    assert decoded is not None
    assert decoded._fields == tuple(msgcls.ordered_fieldnames)
    assert decoded.voltages == [0] * 10 and decoded.voltages_ext == [0] * 4
    assert decoded.get_type() == "BATTERY_STATUS" and type(decoded).__name__ == "BATTERY_STATUS"
    assert decoder_for(msgcls.id) is decoder_for(msgcls.id)
    assert pickle.loads(pickle.dumps(decoded)) == decoded  # e.g. for a multiprocessing queue
    assert decode_fast(3, b"") is None and decoder_for(3) is None  # 3 is not in the dialect
    text = dialect.MAVLink_statustext_message
    decoded = decode_fast(text.id, bytes([4]) + b"low battery\x00junk".ljust(50, b"\x00") + bytes(3))
    assert decoded is not None and decoded.text == "low battery" and decoded.severity == 4


def test_signature_parts_are_exposed() -> None:
    rng = random.Random(3)
    msgcls = dialect.MAVLink_global_position_int_message
    for _ in range(50):
        mav = dialect.MAVLink(None, srcSystem=7, srcComponent=1)
        key = rng.randbytes(32)
        link_id, stamp = rng.randint(0, 255), rng.randint(0, 2**48 - 2)
        mav.signing.secret_key, mav.signing.sign_outgoing = key, True
        mav.signing.link_id, mav.signing.timestamp = link_id, stamp
        raw = msgcls(**random_fields(msgcls, rng)).pack(mav)
        (frame,) = FrameSplitter().feed(raw)
        assert frame.version == 2 and frame.signed
        assert frame.link_id == link_id and frame.timestamp == stamp
        assert frame.raw == raw and frame.signature == raw[-6:] and frame.signed_data == raw[:-6]
        assert hashlib.sha256(key + frame.signed_data).digest()[:6] == frame.signature
    unsigned = pack(msgcls, random_fields(msgcls, rng), variant="v2")
    (frame,) = FrameSplitter().feed(unsigned)
    assert not frame.signed and frame.link_id is None and frame.timestamp is None
    assert frame.signature is None and frame.signed_data is None
    (frame,) = FrameSplitter().feed(pack(msgcls, random_fields(msgcls, rng), variant="v1"))
    assert frame.version == 1 and not frame.signed and frame.name == "GLOBAL_POSITION_INT"


def test_decode_with_pymavlink_for_cold_messages() -> None:
    mav = dialect.MAVLink(None, srcSystem=3, srcComponent=190)
    raws = [
        mav.command_ack_encode(400, 0).pack(mav),
        mav.statustext_encode(6, b"Mission: 3 WP").pack(mav),
        mav.param_value_encode(b"WPNAV_SPEED", 500.0, 9, 900, 12).pack(mav),
        mav.mission_item_int_encode(1, 190, 0, 3, 16, 0, 1, 0, 0, 0, 0, 312300000, 1214700000, 50).pack(mav),
    ]
    frames, _ = split_all(b"".join(raws))
    for frame, raw in zip(frames, raws, strict=True):
        msg = decode_with_pymavlink(frame)
        assert msg.to_dict() == dialect.MAVLink(None).decode(bytearray(raw)).to_dict()
        assert msg.get_srcSystem() == 3 and msg.get_srcComponent() == 190
    assert decode_with_pymavlink(frames[1]).text == "Mission: 3 WP"
    assert message_name(frames[0].msgid) == "COMMAND_ACK" and message_name(3) == "UNKNOWN_3"


def test_payload_edge_lengths() -> None:
    """Empty MAVLink 2 payload (all zero) and an over-long MAVLink 1 payload, both CRC-valid."""
    hb = dialect.MAVLink_heartbeat_message
    x25 = dialect.x25crc

    def frame_v2(msgid: int, payload: bytes, extra: int) -> bytes:
        head = struct.pack("<BBBBBBBHB", 0xFD, len(payload), 0, 0, 9, 1, 1, msgid & 0xFFFF, msgid >> 16)
        crc = x25(head[1:] + payload + bytes([extra])).crc
        return head + payload + struct.pack("<H", crc)

    def frame_v1(msgid: int, payload: bytes, extra: int) -> bytes:
        head = struct.pack("<BBBBBB", 0xFE, len(payload), 9, 1, 1, msgid)
        crc = x25(head[1:] + payload + bytes([extra])).crc
        return head + payload + struct.pack("<H", crc)

    empty = frame_v2(hb.id, b"", hb.crc_extra)
    full = hb(1, 2, 3, 4, 5, 3).pack(dialect.MAVLink(None))
    long_v1 = frame_v1(hb.id, full[10:-2] + b"\x07\x07\x07", hb.crc_extra)
    frames, stats = split_all(empty + long_v1)
    assert stats.frames == 2 and stats.junk_bytes == 0
    assert frames[0].payload == bytes(hb.unpacker.size)
    assert frames[1].payload == full[10:-2]  # cut to the dialect's length, as pymavlink does
    assert frames[1].raw == long_v1
    for frame in frames:
        assert_same_message(decode_fast(frame.msgid, frame.payload), decode_with_pymavlink(frame))


# --- (b) the real ArduCopter log, against pymavlink's robust log reader ------------------


@pytest.fixture(scope="module")
def pymavlink_tlog() -> list[tuple[str, float, dialect.MAVLink_message]]:
    if not TLOG.is_file():
        pytest.skip(f"real flight log not available: {TLOG} (../shared is only beside the project checkout)")
    from pymavlink import mavutil

    log = mavutil.mavlink_connection(str(TLOG), robust_parsing=True)
    out = []
    try:
        while (msg := log.recv_msg()) is not None:
            out.append((msg.get_type(), msg._timestamp, msg))
    finally:
        log.close()
    return out


def test_tlog_same_frames_as_pymavlink(pymavlink_tlog: list[tuple[str, float, Any]]) -> None:
    ref_counts = collections.Counter(kind for kind, _, _ in pymavlink_tlog)
    bad_data = ref_counts.pop("BAD_DATA", 0)
    assert bad_data > 0, "the log is expected to contain corrupt stretches"

    splitter = FrameSplitter()
    ours = list(read_tlog(TLOG, splitter))
    counts = collections.Counter(frame.name for _, frame in ours)
    assert counts == ref_counts
    assert splitter.stats.frames == len(ours) and splitter.pending == 0
    assert splitter.stats.bytes == TLOG.stat().st_size
    assert splitter.stats.bytes == sum(len(f.raw) for _, f in ours) + splitter.stats.junk_bytes

    refs = [(t, m) for kind, t, m in pymavlink_tlog if kind != "BAD_DATA"]
    for (t, frame), (ref_t, ref) in zip(ours, refs, strict=True):
        assert frame.raw == bytes(ref.get_msgbuf())
        assert t == pytest.approx(ref_t, abs=1e-6)
    positions = [(f, m) for (_, f), (_, m) in zip(ours, refs, strict=True) if f.name == "GLOBAL_POSITION_INT"]
    assert len(positions) == ref_counts["GLOBAL_POSITION_INT"]
    for frame, ref in positions:
        assert_same_message(decode_fast(frame.msgid, frame.payload), ref)


def test_tlog_chunking_does_not_matter() -> None:
    if not TLOG.is_file():
        pytest.skip(f"real flight log not available: {TLOG} (../shared is only beside the project checkout)")
    data = TLOG.read_bytes()
    whole, whole_stats = split_all(data)
    pieces, piece_stats = split_all(data, chunks(data, random.Random(11), 700))
    assert pieces == whole
    assert piece_stats == whole_stats


def test_read_tlog_on_synthetic_log(tmp_path: Path) -> None:
    """A tiny log with a corrupt stretch: recorded timestamps come back with their frames."""
    mav = dialect.MAVLink(None, srcSystem=1, srcComponent=1)
    frames = [mav.heartbeat_encode(2, 3, 81, 0, 4).pack(mav), mav.attitude_encode(5, 0.1, 0.2, 0.3, 0, 0, 0).pack(mav)]
    t0 = 1_700_000_000_000_000
    blob = struct.pack(">Q", t0) + frames[0] + b"\xfe\x30garbage" + struct.pack(">Q", t0 + 250_000) + frames[1]
    path = tmp_path / "small.tlog"
    path.write_bytes(blob)
    got = list(read_tlog(path))
    assert [f.raw for _, f in got] == frames
    assert [t for t, _ in got] == [pytest.approx(t0 * 1e-6), pytest.approx((t0 + 250_000) * 1e-6)]
    empty = tmp_path / "empty.tlog"
    empty.write_bytes(b"")
    assert list(read_tlog(empty)) == []


# --- (c) hostile input --------------------------------------------------------------------


def _sample_frames(rng: random.Random, count: int) -> list[bytes]:
    out = []
    names = [*HOT_MESSAGES, "STATUSTEXT", "COMMAND_ACK", "PARAM_VALUE"]
    for i in range(count):
        msgcls = getattr(dialect, f"MAVLink_{rng.choice(names).lower()}_message")
        variant = rng.choice(variants_for(msgcls.id))
        out.append(pack(msgcls, random_fields(msgcls, rng), variant=variant, seq=i % 256, rng=rng))
    return out


def _unknown_frame(rng: random.Random) -> bytes:
    msgid = 0xABCDEF
    assert msgid not in dialect.mavlink_map
    payload = rng.randbytes(rng.randint(1, 40))
    head = struct.pack("<BBBBBBBHB", 0xFD, len(payload), 0, 0, 1, 1, 1, msgid & 0xFFFF, msgid >> 16)
    return head + payload + rng.randbytes(2)


def _accounting_ok(frames: list[Frame], stats: FrameStats, pending: int = 0) -> bool:
    return stats.bytes == sum(len(f.raw) for f in frames) + stats.junk_bytes + pending


def test_random_bytes_never_raise() -> None:
    rng = random.Random(1)
    data = rng.randbytes(200_000)
    frames, stats = split_all(data, chunks(data, rng, 300))
    assert stats.bytes == len(data) and stats.frames == len(frames)
    assert _accounting_ok(frames, stats)
    for frame in frames:  # a chance CRC match is possible; it must then really be valid
        decode_with_pymavlink(frame)
    magic_heavy = bytes(rng.choice(b"\xfd\xfe\x00\x01\xff") for _ in range(50_000))
    frames, stats = split_all(magic_heavy, chunks(magic_heavy, rng, 64))
    assert _accounting_ok(frames, stats)


def test_frames_survive_interleaved_junk() -> None:
    rng = random.Random(2)
    good = _sample_frames(rng, 400)
    stream = b"".join(rng.randbytes(rng.randint(0, 40)) + raw for raw in good) + rng.randbytes(30)
    frames, stats = split_all(stream, chunks(stream, rng, 128))
    raws = [f.raw for f in frames]
    it = iter(raws)
    assert all(raw in it for raw in good), "every real frame must be found, in order"
    assert len(raws) - len(good) <= 2  # junk may match a CRC by chance, very rarely
    assert stats.junk_bytes > 0 and _accounting_ok(frames, stats)


def test_truncated_frame_then_good_frame() -> None:
    rng = random.Random(4)
    a = pack(dialect.MAVLink_gps_raw_int_message, random_fields(dialect.MAVLink_gps_raw_int_message, rng), variant="v2")
    (b,) = _sample_frames(rng, 1)
    for cut in range(1, len(a)):
        frames, stats = split_all(a[:cut] + b)
        assert [f.raw for f in frames] == [b], cut
        assert stats.junk_bytes == cut
    for cut in range(1, len(a)):
        splitter = FrameSplitter()
        assert splitter.feed(a[:cut]) == []
        assert splitter.pending == cut  # waiting for the rest
        assert splitter.flush() == []
        assert splitter.pending == 0 and splitter.stats.junk_bytes == cut


def test_bad_crc_costs_one_magic_byte() -> None:
    rng = random.Random(5)
    a, b, c = _sample_frames(rng, 3)
    broken = bytearray(a)
    broken[-3] ^= 0x01  # last payload byte
    if broken[-3] in (0xFD, 0xFE):
        broken[-3] ^= 0x03
    frames, stats = split_all(bytes(broken) + b + c)
    assert [f.raw for f in frames] == [b, c]
    assert stats.bad_crc >= 1 and stats.junk_bytes == len(a)
    # A false magic byte whose claimed length covers a real frame must not swallow it.
    bogus = bytes([0xFE, 0x40, 0x00, 0x01, 0x01, 0x00])
    frames, stats = split_all(bogus + b + c)
    assert [f.raw for f in frames] == [b, c]
    assert stats.bad_crc == 1 and stats.junk_bytes == len(bogus)


def test_unknown_ids_and_bad_flags() -> None:
    rng = random.Random(6)
    (b,) = _sample_frames(rng, 1)
    unknown = _unknown_frame(rng)
    frames, stats = split_all(unknown + b + unknown)
    assert [f.raw for f in frames] == [b]
    assert stats.unknown_id == 2 and stats.junk_bytes == 2 * len(unknown) and stats.bad_crc == 0

    splitter = FrameSplitter()
    assert splitter.feed(unknown) == [] and splitter.pending == len(unknown)  # decided by what follows
    assert [f.raw for f in splitter.feed(b)] == [b] and splitter.stats.unknown_id == 1

    flagged = bytearray(pack(dialect.MAVLink_attitude_message, {"time_boot_ms": 1, "roll": 0.5, "pitch": 0.1,
                        "yaw": 0.2, "rollspeed": 0.0, "pitchspeed": 0.0, "yawspeed": 0.0}, variant="v2"))  # fmt: skip
    flagged[2] = 0x02  # an incompat flag nobody defined
    frames, stats = split_all(bytes(flagged) + b)
    assert [f.raw for f in frames] == [b]
    assert stats.bad_flags == 1 and stats.junk_bytes == len(flagged)


def test_chunk_boundaries_do_not_matter() -> None:
    rng = random.Random(8)
    good = _sample_frames(rng, 300)
    parts: list[bytes] = []
    for raw in good:
        kind = rng.random()
        if kind < 0.1:
            parts.append(rng.randbytes(rng.randint(1, 30)))
        elif kind < 0.15:
            # Truncated. Not inside a signature: the CRC does not cover it, so a signed frame cut
            # there still passes and takes its missing bytes from the next frame (as in pymavlink).
            signed = raw[0] == 0xFD and raw[2] & 0x01
            parts.append(raw[: rng.randint(1, len(raw) - 1 - (13 if signed else 0))])
        elif kind < 0.2:
            parts.append(_unknown_frame(rng))
        elif kind < 0.25:
            broken = bytearray(raw)
            broken[rng.randrange(1, len(raw))] ^= 0xFF
            parts.append(bytes(broken))
        parts.append(raw)
    stream = b"".join(parts)
    whole, whole_stats = split_all(stream)
    assert whole_stats.bad_crc > 0 and whole_stats.unknown_id > 0
    assert _accounting_ok(whole, whole_stats)
    for raw in good:
        assert raw in {f.raw for f in whole}
    by_byte, byte_stats = split_all(stream, (stream[i : i + 1] for i in range(len(stream))))
    assert by_byte == whole and byte_stats == whole_stats
    for seed in range(5):
        sizes = random.Random(seed)
        pieces, piece_stats = split_all(stream, chunks(stream, sizes, sizes.choice((3, 40, 300, 5000))))
        assert pieces == whole and piece_stats == whole_stats
    as_views, _ = split_all(stream, (memoryview(stream)[i : i + 64] for i in range(0, len(stream), 64)))
    as_arrays, _ = split_all(stream, (bytearray(stream[i : i + 64]) for i in range(0, len(stream), 64)))
    assert as_views == whole and as_arrays == whole


def test_memory_stays_bounded() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(bytes([0xFE, 0xFF]) + bytes(10)) == []
    assert splitter.pending == 12  # a 263-byte frame could still complete
    for _ in range(100):
        splitter.feed(bytes([0xFD, 0xFF, 0x01]) + bytes(100))
        assert splitter.pending <= MAX_FRAME_LEN
    splitter.feed(bytes(1000))
    assert splitter.pending == 0


def test_stats_count_frames_and_bytes() -> None:
    rng = random.Random(9)
    good = _sample_frames(rng, 20)
    splitter = FrameSplitter()
    for raw in good:
        assert [f.raw for f in splitter.feed(raw, final=True)] == [raw]
    assert splitter.stats == FrameStats(frames=20, bytes=sum(map(len, good)))


# --- the benchmark's building blocks -------------------------------------------------------


def test_benchmark_functions_run() -> None:
    from gateway.bench import mavlink_decode as bench

    datagrams = bench.build_mix(drones=3, seconds=2)
    assert len(datagrams) == 3 * 2 * sum(bench.RATES_HZ.values())
    assert all(d[0] == 0xFD for d in datagrams)
    assert bench.pymavlink_ceiling(datagrams, repeat=1) > 0
    assert bench.fast_path_rate(datagrams, repeat=1) > 0
    frames, _ = split_all(b"".join(datagrams))
    refs = pymavlink_parse(b"".join(datagrams))
    for frame, ref in zip(frames, refs, strict=True):
        assert_same_message(decode_fast(frame.msgid, frame.payload), ref)

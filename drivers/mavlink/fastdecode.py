"""Fast payload decoders that give pymavlink's field values without pymavlink's objects.

Each decoder is one precompiled ``struct`` unpack plus one tuple construction. The layout
comes from pymavlink's own generated message classes (``unpacker``, ``ordered_fieldnames``,
``lengths``, ``fieldtypes``), so it follows pymavlink and the dialect exactly, MAVLink 2
extension fields included; nothing is hand-written per message.

A decoded message is a named tuple whose attribute names are pymavlink's field names and
whose values equal pymavlink's attributes: ``int`` for integer fields, ``float`` for float
fields, ``list`` for numeric arrays, ``str`` for char arrays (cut at the first NUL and
ASCII-decoded with replacement, as pymavlink does). Tuple positions follow the *wire*
order (``_fields == ordered_fieldnames``), which is what makes the unpack free of
reordering; use attribute names, not positions. ``get_type()`` and ``get_msgId()`` work as
on pymavlink messages, so normalisation code can take either kind.

Every message of the dialect can be decoded this way (decoders are built on first use);
:data:`HOT_MESSAGES` are built at import.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as dialect

__all__ = ["HOT_MESSAGES", "FastMessage", "decode_fast", "decoder_for"]

#: Messages the gateway sees at high rate; their decoders exist before the first frame.
HOT_MESSAGES: tuple[str, ...] = (
    "GLOBAL_POSITION_INT",
    "ATTITUDE",
    "HEARTBEAT",
    "SYS_STATUS",
    "GPS_RAW_INT",
    "VFR_HUD",
    "BATTERY_STATUS",
    "EXTENDED_SYS_STATE",
    "RADIO_STATUS",
    "HOME_POSITION",
    "SYSTEM_TIME",
    "MISSION_CURRENT",
)

#: A decoded message: a named tuple (see the module docstring).
FastMessage = tuple[Any, ...]
Decoder = Callable[[bytes], FastMessage]


_CLASSES: dict[str, type] = {}


def _build(msgcls: type[dialect.MAVLink_message]) -> Decoder:
    """Generate the decoder for one pymavlink message class from its metadata."""
    name = msgcls.msgname
    msgid = msgcls.id
    fields = list(msgcls.ordered_fieldnames)
    base = namedtuple(name, fields)  # type: ignore[misc]
    cls = type(
        name,
        (base,),
        {
            "__slots__": (),
            "__module__": __name__,
            "get_type": lambda self: name,
            "get_msgId": lambda self: msgid,
        },
    )
    _CLASSES[name] = cls
    unpack_from = msgcls.unpacker.unpack_from
    types_by_name = dict(zip(msgcls.fieldnames, msgcls.fieldtypes, strict=True))
    exprs: list[str] = []
    flat = 0  # index into the flat tuple that struct returns
    simple = True
    for wire_index, field in enumerate(fields):
        count = msgcls.lengths[wire_index]
        if types_by_name[field] == "char" and msgcls.array_lengths[wire_index]:
            # pymavlink: text.split(b"\x00", 1)[0].decode("ascii", errors="replace")
            exprs.append(f't[{flat}].split(b"\\x00", 1)[0].decode("ascii", "replace")')
            simple = False
        elif msgcls.array_lengths[wire_index]:
            exprs.append(f"list(t[{flat}:{flat + count}])")
            simple = False
        else:
            exprs.append(f"t[{flat}]")
        flat += count
    if simple:
        source = "def decode(payload):\n    return _new(_cls, _unpack(payload))\n"
    else:
        source = f"def decode(payload):\n    t = _unpack(payload)\n    return _new(_cls, ({', '.join(exprs)},))\n"
    namespace: dict[str, Any] = {"_new": tuple.__new__, "_cls": cls, "_unpack": unpack_from}
    exec(compile(source, f"<fastdecode {name}>", "exec"), namespace)
    decode: Decoder = namespace["decode"]
    decode.__qualname__ = decode.__name__ = f"decode_{name.lower()}"
    decode.__doc__ = f"Decode a full-length {name} payload ({msgcls.unpacker.size} bytes)."
    return decode


_DECODERS: dict[int, Decoder] = {}


def decoder_for(msgid: int) -> Decoder | None:
    """The decoder for ``msgid`` (payload -> named tuple), or None for an id the dialect lacks.

    Built on first use and cached; hot loops can hold on to the returned function.
    """
    decoder = _DECODERS.get(msgid)
    if decoder is None:
        msgcls = dialect.mavlink_map.get(msgid)
        if msgcls is None:
            return None
        decoder = _DECODERS[msgid] = _build(msgcls)
    return decoder


def decode_fast(msgid: int, payload: bytes) -> FastMessage | None:
    """Decode a full-length payload (``Frame.payload``); None if the dialect lacks ``msgid``.

    Raises ``struct.error`` only for a payload shorter than the message's full length,
    which the splitter never produces.
    """
    try:
        decoder = _DECODERS[msgid]
    except KeyError:
        decoder = decoder_for(msgid)  # type: ignore[assignment]
        if decoder is None:
            return None
    return decoder(payload)


for _name in HOT_MESSAGES:  # build the hot decoders now, not on the first frame
    decoder_for(getattr(dialect, f"MAVLINK_MSG_ID_{_name}"))


def __getattr__(name: str) -> type:
    """Message tuple classes by name (``fastdecode.ATTITUDE``), so decoded messages pickle."""
    msgid = getattr(dialect, f"MAVLINK_MSG_ID_{name}", None)
    if isinstance(msgid, int) and decoder_for(msgid) is not None and name in _CLASSES:
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

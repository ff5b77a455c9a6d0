"""MAVLink 2 message signing: verifying what drones send, and the policy of what to accept.

A signed frame carries link id, a 48-bit timestamp (10 µs units since 2015-01-01 UTC) and
``sha256(secret_key + header + payload + crc + link_id + timestamp)[:6]``. A frame is authentic when that
signature matches the drone's configured key and its timestamp is not older than the last one seen on the
same (system, component, link) stream, which stops replays of captured frames.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from drivers.mavlink.framing import Frame

__all__ = ["SigningPolicy", "mavlink_timestamp_now"]

_EPOCH_2015_S = 1_420_070_400


def mavlink_timestamp_now() -> int:
    """The current time in the signing timestamp's units (10 µs since 2015-01-01 UTC)."""
    return int((time.time() - _EPOCH_2015_S) * 100_000)


@dataclass
class SigningPolicy:
    """Per-system keys and whether signing is required. Returns a reason string for frames to drop."""

    keys: dict[int, bytes] = field(default_factory=dict)
    required: set[int] = field(default_factory=set)
    _last_ts: dict[tuple[int, int, int], int] = field(default_factory=dict)

    def check(self, frame: Frame) -> str | None:
        """None when the frame may be used; else the reason code (``unsigned``, ``bad_signature``, ...)."""
        sysid = frame.sysid
        key = self.keys.get(sysid)
        if not frame.signed:
            return "unsigned" if sysid in self.required else None
        if key is None:
            # Signed by a drone we hold no key for: usable only if signing is not required for it.
            return "unknown_signing_key" if sysid in self.required else None
        raw = frame.raw
        if hashlib.sha256(key + raw[:-6]).digest()[:6] != raw[-6:]:
            return "bad_signature"
        stream = (sysid, frame.compid, raw[-13])
        timestamp = int.from_bytes(raw[-12:-6], "little")
        last = self._last_ts.get(stream)
        if last is not None and timestamp < last:
            return "replayed_signature"
        self._last_ts[stream] = timestamp
        return None

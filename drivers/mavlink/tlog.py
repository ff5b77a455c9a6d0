"""Reading telemetry logs (.tlog): recorded MAVLink streams for replay and tests.

A tlog is what ground stations record: each frame is preceded by an 8-byte big-endian
timestamp in microseconds since the Unix epoch. Real logs have corrupt stretches, so the
reader does not trust that layout: the whole file goes through :class:`FrameSplitter`
(timestamps are just bytes it skips), and each valid frame then takes the 8 bytes in front
of it as its timestamp. A value that cannot be a timestamp of this log (more than three
days away from the previous good one, pymavlink's rule) is replaced by the previous good
one. The frames found are exactly those that pymavlink's robust log reader finds.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

from drivers.mavlink.framing import Frame, FrameSplitter

__all__ = ["read_tlog"]

_CHUNK = 1 << 20
_MAX_JUMP_S = 3 * 24 * 3600.0


def read_tlog(path: str | os.PathLike[str], splitter: FrameSplitter | None = None) -> Iterator[tuple[float, Frame]]:
    """Yield ``(unix_seconds, frame)`` for every valid frame of the log, in file order.

    Pass a ``splitter`` to read its ``stats`` afterwards (junk, bad CRCs, unknown ids).
    The file is memory-mapped, so large logs are not read into memory at once.
    """
    splitter = splitter if splitter is not None else FrameSplitter()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = 0  # end of the previous frame: a frame's bytes occur first at its own offset
            last_good: float | None = None
            for start in range(0, size, _CHUNK):
                final = start + _CHUNK >= size
                for frame in splitter.feed(data[start : start + _CHUNK], final=final):
                    offset = data.find(frame.raw, cursor)
                    cursor = offset + len(frame.raw)
                    t = int.from_bytes(data[offset - 8 : offset], "big") * 1e-6 if offset >= 8 else None
                    if t is None or (last_good is not None and abs(t - last_good) > _MAX_JUMP_S):
                        t = last_good if last_good is not None else 0.0
                    else:
                        last_good = t
                    yield t, frame

"""A durable on-disk FIFO of writer batches for when the database is down or slow.

File format. The spool is a folder of segment files ``spool-<12-digit sequence>.seg``, written in sequence
order. A segment is a run of records::

    record := b"PGSP" | length: u32 big-endian | crc32(payload): u32 big-endian | payload (length bytes)

``payload`` is an encoded batch (see ``telemetry.writer``). ``append`` writes one record and fsyncs before it
returns, so a batch counts as durable (and its producers may be acknowledged) only once it is on disk. A new
segment starts when the current one passes ``segment_bytes``. Records are read back oldest first; a segment is
deleted only after every record in it was acknowledged with ``ack`` (committed to the database). A torn tail
(crash mid-append: short record or CRC mismatch) ends the segment's readable part; it was never fsynced, hence
never acknowledged to anyone, and is logged and discarded.

Full behaviour: ``append`` raises ``SpoolFullError`` past ``max_bytes``; the writer then stops taking
batches, which blocks the drivers (backpressure) instead of dropping data.

One owner: a spool holds an exclusive ``flock`` on ``spool.lock`` in its folder until ``close``. Two gateway
instances given the same folder (easy to do when scaling out with one config file) would replay each other's
batches and delete each other's segments; the second one fails at start with ``SpoolInUseError`` instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpoolFullError", "SpoolInUseError", "SpoolRecord"]

log = logging.getLogger(__name__)

_MAGIC = b"PGSP"
_HEADER = struct.Struct(">4sII")


class SpoolFullError(RuntimeError):
    """The spool holds ``max_bytes`` already; the caller must wait for the database."""


class SpoolInUseError(RuntimeError):
    """Another spool (another process, or another writer of this one) owns the folder."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    segment: int
    end_offset: int
    payload: bytes


class Spool:
    """Append-only segment files with a read cursor; single-threaded use (the writer's thread)."""

    def __init__(self, directory: Path | str, max_bytes: int = 2 << 30, segment_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = self._lock()
        try:
            self.max_bytes = max_bytes
            self.segment_bytes = segment_bytes
            self._segments = sorted(self._seq(p) for p in self.directory.glob("spool-*.seg") if self._is_own(p))
            self._read_seg = self._segments[0] if self._segments else None
            self._read_off = 0
            self._pending = self._count_records()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> int:
        """The folder's lock, held until ``close`` (or the process ends); the owner's pid is in the file."""
        path = self.directory / "spool.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolInUseError(
                f"the spool folder {self.directory} is in use (pid {owner}); give each gateway instance its own "
                "[writer] spool_dir"
            ) from None
        except BaseException:  # a file system without flock, say: the error as it is, without the descriptor
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def close(self) -> None:
        """Release the folder; safe to call twice."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # a spool dropped without close() must not lock its folder for the process's life
        with contextlib.suppress(Exception):  # at interpreter exit what close() needs may be gone; so is the lock
            self.close()

    def _is_own(self, path: Path) -> bool:
        """Whether ``path`` is named exactly as this spool names its segments (``_path``): a copy named
        otherwise (``spool-1.seg``) would be counted but never read, or read twice."""
        digits = path.stem[len("spool-"):]
        if digits.isdigit() and path.name == self._path(int(digits)).name:
            return True
        log.warning("ignoring %s in the spool folder: not a spool segment name", path.name)
        return False

    @staticmethod
    def _seq(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def _path(self, seq: int) -> Path:
        return self.directory / f"spool-{seq:012d}.seg"

    def _count_records(self) -> int:
        count = 0
        for seq in self._segments:
            offset = 0
            while (rec := self._read_at(seq, offset)) is not None:
                count += 1
                offset = rec.end_offset
        return count

    @property
    def pending(self) -> int:
        """Records appended and not yet acknowledged."""
        return self._pending

    @property
    def size_bytes(self) -> int:
        return sum(self._path(s).stat().st_size for s in self._segments if self._path(s).exists())

    def append(self, payload: bytes) -> None:
        """Write one record and fsync it; raises SpoolFullError past max_bytes."""
        if self.size_bytes + len(payload) + _HEADER.size > self.max_bytes and self._pending:
            raise SpoolFullError(f"spool {self.directory} holds {self.size_bytes} bytes (max {self.max_bytes})")
        seq = self._segments[-1] if self._segments else None
        if seq is None or self._path(seq).stat().st_size >= self.segment_bytes:
            seq = (self._segments[-1] + 1) if self._segments else 1
            self._segments.append(seq)
            if self._read_seg is None:
                self._read_seg, self._read_off = seq, 0
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._pending += 1

    def adopt(self, directory: Path | str) -> int:
        """Take over the segments of another spool folder, behind this spool's own, and remove that folder;
        returns how many records came with them. For a folder whose owner will not come back (an ingest worker
        the configuration no longer has): its batches are replayed by this spool's owner instead of stranded.
        Fails with ``SpoolInUseError`` while the folder's owner still runs."""
        with Spool(directory, max_bytes=self.max_bytes, segment_bytes=self.segment_bytes) as other:
            records = other.pending
            for seq in other._segments:
                new_seq = (self._segments[-1] + 1) if self._segments else 1
                os.replace(other._path(seq), self._path(new_seq))
                self._segments.append(new_seq)
                if self._read_seg is None:
                    self._read_seg, self._read_off = new_seq, 0
            other._segments.clear()
            self._pending += records
        fd = os.open(self.directory, os.O_RDONLY)  # the renames are durable before the records count as ours
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            (Path(directory) / "spool.lock").unlink()
            Path(directory).rmdir()
        return records

    def _read_at(self, seq: int, offset: int) -> SpoolRecord | None:
        path = self._path(seq)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                header = fh.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    if header:
                        log.warning("spool %s: torn record header at %d discarded", path.name, offset)
                    return None
                magic, length, crc = _HEADER.unpack(header)
                payload = fh.read(length)
        except FileNotFoundError:
            return None
        if magic != _MAGIC or len(payload) < length or zlib.crc32(payload) != crc:
            log.warning("spool %s: torn or corrupt record at %d discarded", path.name, offset)
            return None
        return SpoolRecord(seq, offset + _HEADER.size + length, payload)

    def peek(self) -> SpoolRecord | None:
        """The oldest unacknowledged record, or None when the spool is drained."""
        while self._read_seg is not None:
            rec = self._read_at(self._read_seg, self._read_off)
            if rec is not None:
                return rec
            # This segment is consumed (or ends in a torn tail): drop it and move on.
            self._retire(self._read_seg)
        return None

    def ack(self, record: SpoolRecord) -> None:
        """Mark ``record`` (the one ``peek`` returned) as committed; deletes its segment once consumed."""
        self._read_off = record.end_offset
        self._pending = max(0, self._pending - 1)

    def _retire(self, seq: int) -> None:
        self._path(seq).unlink(missing_ok=True)
        if seq in self._segments:
            self._segments.remove(seq)
        self._read_seg = self._segments[0] if self._segments else None
        self._read_off = 0

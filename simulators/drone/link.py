"""MAVLink 2 framing, signing and link-level fault injection for one drone.

Every frame is packed even when the fault layer then drops it, so sequence numbers keep counting and the
receiver sees realistic gaps, exactly what a lossy radio looks like to a gateway.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .clock import SimClock
from .transport import Transport

SIGNING_EPOCH_UNIX_S = 1_420_070_400  # 2015-01-01, the MAVLink signing timestamp epoch

MessageHandler = Callable[[mavlink2.MAVLink_message], None]


def signing_timestamp_now() -> int:
    """MAVLink signing timestamp: 10 microsecond units since 2015-01-01 (real time, not simulated)."""
    return int((time.time() - SIGNING_EPOCH_UNIX_S) * 100_000)


@dataclass(slots=True)
class LinkStats:
    sent: int = 0
    sent_dropped: int = 0
    received: int = 0
    received_dropped: int = 0
    rejected: int = 0  # bad CRC, bad or missing signature


class MavLink:
    """Packs outgoing and parses incoming MAVLink 2 frames, applying loss, latency and outages."""

    def __init__(
        self,
        sysid: int,
        compid: int,
        transport: Transport,
        clock: SimClock,
        rng: random.Random,
        signing_key: bytes | None = None,
        signing_link_id: int = 0,
    ) -> None:
        self._mav = mavlink2.MAVLink(None, srcSystem=sysid, srcComponent=compid)
        self._mav.robust_parsing = True
        if signing_key is not None:
            if len(signing_key) != 32:
                raise ValueError("MAVLink signing key must be 32 bytes")
            self._mav.signing.secret_key = signing_key
            self._mav.signing.sign_outgoing = True
            self._mav.signing.link_id = signing_link_id
            self._mav.signing.timestamp = signing_timestamp_now()
        self._signing = signing_key is not None
        self._transport = transport
        self._clock = clock
        self._rng = rng
        self.on_message: MessageHandler | None = None
        self.stats = LinkStats()
        self.packet_loss_pct = 0.0
        self.latency_ms = 0.0
        self._down_until_s = -1.0

    @property
    def transport(self) -> Transport:
        return self._transport

    # ----------------------------------------------------------------- faults

    def drop_for(self, sim_s: float) -> None:
        """Silence the link in both directions for sim_s simulated seconds."""
        self._down_until_s = max(self._down_until_s, self._clock.now_s() + sim_s)

    @property
    def is_down(self) -> bool:
        return self._clock.now_s() < self._down_until_s

    def _lost(self) -> bool:
        return self.packet_loss_pct > 0 and self._rng.random() * 100.0 < self.packet_loss_pct

    # ----------------------------------------------------------------- outgoing

    def send(self, msg: mavlink2.MAVLink_message) -> None:
        mav = self._mav
        if self._signing:
            mav.signing.timestamp = max(mav.signing.timestamp, signing_timestamp_now())
        data = msg.pack(mav)
        mav.seq = (mav.seq + 1) % 256
        self.stats.sent += 1
        if self.is_down or self._lost():
            self.stats.sent_dropped += 1
            return
        if self.latency_ms > 0:
            asyncio.get_running_loop().call_later(self.latency_ms / 1000.0, self._transport.send, data)
        else:
            self._transport.send(data)

    # ----------------------------------------------------------------- incoming

    def reset_parser(self) -> None:
        """Forget a half-received frame (a new TCP connection starts on a frame boundary)."""
        self._mav.buf = bytearray()
        self._mav.buf_index = 0
        self._mav.expected_length = mavlink2.HEADER_LEN_V1 + 2

    def feed(self, data: bytes) -> None:
        """Bytes from the transport; complete, valid (and, with a key, correctly signed) frames are
        delivered to on_message unless the fault layer eats them."""
        try:
            messages = self._mav.parse_buffer(data) or []
        except mavlink2.MAVError:
            self.stats.rejected += 1
            return
        for msg in messages:
            kind = msg.get_type()
            if kind == "BAD_DATA" or kind.startswith("UNKNOWN"):
                self.stats.rejected += 1
                continue
            self.stats.received += 1
            if self.is_down or self._lost():
                self.stats.received_dropped += 1
                continue
            if self.on_message is None:
                continue
            if self.latency_ms > 0:
                asyncio.get_running_loop().call_later(self.latency_ms / 1000.0, self.on_message, msg)
            else:
                self.on_message(msg)

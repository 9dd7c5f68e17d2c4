"""Time-ordered, unguessable message ids (UUIDv7, RFC 9562)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


class IdGenerator:
    """Makes UUIDv7s that sort in creation order even within one millisecond."""

    def __init__(
        self,
        clock_ms: Callable[[], int] = time.time_ns,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        # clock_ms may return nanoseconds (the default); anything above 2**48 is scaled.
        self._clock = clock_ms
        self._random = random_bytes
        self._last_ms = -1
        self._counter = 0

    def _now_ms(self) -> int:
        now = self._clock()
        return now // 1_000_000 if now >= 1 << 48 else now

    def new(self) -> str:
        ms = self._now_ms()
        if ms <= self._last_ms:
            # Same (or a stepped-back) millisecond: bump the 12-bit counter so order holds.
            ms = self._last_ms
            self._counter += 1
            if self._counter > 0xFFF:
                ms += 1
                self._counter = 0
        else:
            self._counter = int.from_bytes(self._random(2), "big") & 0x3FF
        self._last_ms = ms
        rand_b = int.from_bytes(self._random(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76 | self._counter << 64 | 0b10 << 62 | rand_b
        # Formatting by hand: uuid.UUID() costs more than the rest of the request parsing.
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

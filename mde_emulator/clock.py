"""The emulator's clock: real time plus an offset that only moves forward (POST /admin/clock {"advance": s}).
Frozen (POST /admin/clock {"frozen": true}) it stands still until advanced or thawed, so a test decides alone when
emulator time passes, however slowly the machine runs; thawed, it returns to real time plus the offset.

Everything the service decides by time reads it: action lifecycles, package link expiry, token lifetimes and
expiry, authorization-code lifetime, rate-limit windows, the alert stream and timestamps that mean "now".
Tests advance it instead of sleeping. Deliberately on real time: timestamps the client makes with its own clock
(client-assertion JWTs, the oproxy token stamp), certificate validity, and the latency fault.
"""

from __future__ import annotations

import datetime as dt
import threading
import time


class Clock:
    def __init__(self, offset: float = 0.0):
        self._lock = threading.Lock()
        self._offset = float(offset)
        self._frozen_now: float | None = None  # while frozen: the time it shows (advances add to it exactly)

    @property
    def offset(self) -> float:
        """Seconds the clock has been advanced beyond real time."""
        return self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen_now is not None

    def now(self) -> float:
        """Epoch seconds."""
        with self._lock:
            return time.time() + self._offset if self._frozen_now is None else self._frozen_now

    def freeze(self, frozen: bool) -> None:
        """Stop the clock (kept while already frozen) or let it run again; it never goes backwards."""
        with self._lock:
            if frozen and self._frozen_now is None:
                self._frozen_now = time.time() + self._offset
            elif not frozen and self._frozen_now is not None:
                self._offset = max(self._offset, self._frozen_now - time.time())
                self._frozen_now = None

    def utcnow(self) -> dt.datetime:
        """The current time as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.now(), dt.timezone.utc)

    def advance(self, seconds: float) -> float:
        """Move the clock forward; returns the new offset. Time never goes backwards."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0 or \
                seconds == float("inf"):
            raise ValueError("advance must be a non-negative, finite number of seconds")
        with self._lock:
            self._offset += float(seconds)
            if self._frozen_now is not None:
                self._frozen_now += float(seconds)
            return self._offset

    def snapshot(self) -> dict:
        now = self.now()
        return {"now": now, "utc": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                "offset_seconds": self._offset, "frozen": self.frozen}

"""The emulator's clock: real time plus an offset that only moves forward (POST /admin/clock {"advance": s}).

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

    @property
    def offset(self) -> float:
        """Seconds the clock has been advanced beyond real time."""
        return self._offset

    def now(self) -> float:
        """Epoch seconds."""
        return time.time() + self._offset

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
            return self._offset

    def snapshot(self) -> dict:
        now = self.now()
        return {"now": now, "utc": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                "offset_seconds": self._offset}

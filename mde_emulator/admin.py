"""Admin endpoints (no auth, loopback only): counters, faults, the clock, alert generation, internal machine state.

Also the background alert stream (`--alert-stream RATE`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
from typing import TYPE_CHECKING

from . import api_actions
from .web import PLAIN_JSON, ApiError, Request, Response, Route

if TYPE_CHECKING:
    from .server import Emulator

SEVERITIES = ("UnSpecified", "Informational", "Low", "Medium", "High")
STATUSES = ("New", "InProgress", "Resolved")


def _json(payload, status: int = 200) -> Response:
    return Response.json(status, payload, content_type=PLAIN_JSON)


def _body(request: Request) -> dict:
    body = request.json() if request.body.strip() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "body must be a JSON object")
    return body


def get_counters(request: Request) -> Response:
    return _json(request.emu.counters.snapshot())


def reset_counters(request: Request) -> Response:
    request.emu.counters.reset()
    request.emu.rate_limiter.reset()
    return _json(request.emu.counters.snapshot())


def get_faults(request: Request) -> Response:
    return _json(dataclasses.asdict(request.emu.faults))


def set_faults(request: Request) -> Response:
    emu = request.emu
    changes = _body(request)
    with emu.faults_lock:
        try:
            emu.faults.update(changes)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        if changes.keys() & {"rate_limit_per_minute", "rate_limit_families", "rate_limit_window_seconds"}:
            emu.rate_limiter.reset()
        return _json(dataclasses.asdict(emu.faults))


def generate_alerts(request: Request) -> Response:
    body = _body(request)
    unknown = set(body) - {"count", "same_timestamp", "created_offset_seconds", "severity", "status", "machine_id"}
    if unknown:
        raise ApiError(400, "BadRequest", f"unknown field(s): {', '.join(sorted(unknown))}")
    count = body.get("count", 1)
    if not isinstance(count, int) or not 1 <= count <= 10000:
        raise ApiError(400, "BadRequest", "count must be an integer from 1 to 10000")
    severity, status = body.get("severity"), body.get("status")
    if severity is not None and severity not in SEVERITIES:
        raise ApiError(400, "BadRequest", f"severity must be one of {', '.join(SEVERITIES)}")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "BadRequest", f"status must be one of {', '.join(STATUSES)}")
    offset = body.get("created_offset_seconds", 0)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        raise ApiError(400, "BadRequest", "created_offset_seconds must be a number")
    store = request.emu.store
    machine = None
    if body.get("machine_id"):
        machine = store.find_machine(str(body["machine_id"]))
        if machine is None:
            raise ApiError(404, "NotFound", f"machine {body['machine_id']} not found")
    ids = add_alerts(request.emu, count, same_timestamp=bool(body.get("same_timestamp")),
                     offset_seconds=float(offset), severity=severity, status=status,
                     machine=machine)
    return _json({"ids": ids}, status=201)


def add_alerts(emu: Emulator, count: int, *, same_timestamp: bool = False, offset_seconds: float = 0.0,
               severity: str | None = None, status: str | None = None, machine: dict | None = None) -> list[str]:
    """New alerts visible now; creation time = now + offset (negative: late arrival), distinct unless shared."""
    now = emu.clock.utcnow()
    created = now + dt.timedelta(seconds=offset_seconds)
    ids = []
    for i in range(count):
        when = created if same_timestamp else created - dt.timedelta(microseconds=count - 1 - i)
        ids.append(emu.store.add_alert(created=when, visible_at=max(now, when), severity=severity,
                                       status=status or "New", machine=machine)["id"])
    return ids


def get_clock(request: Request) -> Response:
    return _json(request.emu.clock.snapshot())


def set_clock(request: Request) -> Response:
    """{"advance": seconds} moves the emulator's clock forward (pending actions catch up); {"frozen": true|false}
    stops it or lets it run again; both may be given."""
    body = _body(request)
    if not body or set(body) - {"advance", "frozen"}:
        raise ApiError(400, "BadRequest", 'body must be {"advance": seconds} and/or {"frozen": true|false}')
    if "frozen" in body and not isinstance(body["frozen"], bool):
        raise ApiError(400, "BadRequest", "frozen must be true or false")
    if "advance" in body:
        try:
            request.emu.clock.advance(body["advance"])  # checked before freezing: a bad body changes nothing
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
    if "frozen" in body:
        request.emu.clock.freeze(body["frozen"])
    api_actions.advance_actions(request.emu)
    return _json(request.emu.clock.snapshot())


def machine_state(request: Request) -> Response:
    api_actions.advance_actions(request.emu)
    store = request.emu.store
    machine = store.find_machine(request.params["id"])
    if machine is None:
        raise ApiError(404, "NotFound", f"machine {request.params['id']} not found")
    return _json({"machine": machine, "state": store.machine_state.get(machine["id"], {}),
                  "users": store.machine_users.get(machine["id"], [])})


def summary(request: Request) -> Response:
    store = request.emu.store
    return _json({"machines": len(store.machines), "alerts": len(store.alerts), "actions": len(store.actions),
                  "investigations": len(store.investigations), "pending_actions": len(store.action_plans)})


ROUTES = [
    Route("GET", "/admin", summary),
    Route("GET", "/admin/counters", get_counters),
    Route("POST", "/admin/counters/reset", reset_counters),
    Route("GET", "/admin/faults", get_faults),
    Route("POST", "/admin/faults", set_faults),
    Route("POST", "/admin/alerts/generate", generate_alerts),
    Route("GET", "/admin/machines/{id}", machine_state),
    Route("GET", "/admin/clock", get_clock),
    Route("POST", "/admin/clock", set_clock),
]


class AlertStream:
    """Adds alerts as emulator time passes: about `rate` per second of the emulator's clock (so advancing the clock
    produces the alerts of that period, at most MAX_BATCH per step), sometimes a burst sharing one timestamp,
    sometimes a late one whose creation time is up to two minutes old. A background thread steps every TICK real
    seconds; tests may call `step()` directly."""

    TICK = 0.25
    MAX_BATCH = 10000

    def __init__(self, emu: Emulator, rate: float, seed: int | None = None):
        self.emu, self.rate = emu, rate
        self.rng = random.Random(emu.options.seed + 7 if seed is None else seed)
        self._last = emu.clock.now()
        self._owed = 0.0  # fractional alerts carried between steps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.TICK):
            self.step()

    def step(self) -> int:
        """Add the alerts due for the emulator time since the last step; returns how many."""
        now = self.emu.clock.now()
        self._owed = min(self._owed + self.rate * max(0.0, now - self._last), float(self.MAX_BATCH))
        self._last = now
        count = int(self._owed)
        self._owed -= count
        if count == 0:
            return 0
        roll = self.rng.random()
        if roll < 0.1:
            return len(add_alerts(self.emu, count + self.rng.randint(2, 5), same_timestamp=True))
        if roll < 0.2:
            late = add_alerts(self.emu, 1, offset_seconds=-self.rng.uniform(5, 120))
            return len(late) + (len(add_alerts(self.emu, count - 1)) if count > 1 else 0)
        return len(add_alerts(self.emu, count))

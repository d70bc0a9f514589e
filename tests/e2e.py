"""Helpers for the end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.emulator import Emulator
from lab.runner import Mde
from xsoar_local.cli import POLL_WAIT_SCALE_ENV


@dataclass
class Lab:
    emulator: Emulator
    instances: dict[str, Path]
    mde: Mde


def token_requests(emulator: Emulator) -> dict[str, int]:
    return emulator.counters()["token_requests"]


def api_requests(emulator: Emulator, route: str) -> int:
    return emulator.counters()["requests"].get(route, 0)


def run_advancing_clock(lab: Lab, instance: Path, command: str, *args: str, when: Callable[[], bool],
                        seconds: float, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Runs `mde` on the frozen emulator clock with no wait between polling rounds; once `when()` holds (or the
    command has ended), moves the clock `seconds` forward and waits for the command. So emulator time passes
    exactly when the test says, however slow the machine: no sleeping, no race with real time."""
    with lab.emulator.frozen_clock():
        process = lab.mde.start(instance, command, *args, options=options, env={POLL_WAIT_SCALE_ENV: "0"})
        try:
            while still_running(process) and not when():
                pass
            lab.emulator.advance_clock(seconds)
            # Pipes are safe: what the test waits for happens before the command writes much.
            stdout, stderr = process.communicate(timeout=lab.mde.timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def still_running(process: subprocess.Popen) -> bool:
    """Gives the process a moment to end; True while it runs."""
    try:
        process.wait(timeout=0.05)
    except subprocess.TimeoutExpired:
        return True
    return False


def actions_requested(lab: Lab, count: int = 1) -> Callable[[], bool]:
    """A `when` for run_advancing_clock: `count` more machine actions exist than now."""
    before = lab.emulator.summary()["actions"]
    return lambda: lab.emulator.summary()["actions"] >= before + count


def action_delay(lab: Lab) -> float:
    """Seconds from an action's request to its end, on the emulator's clock."""
    return lab.emulator.admin("GET", "faults")["action_delay"]

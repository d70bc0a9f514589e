"""Helpers for the end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.emulator import Emulator
from lab.runner import Mde


@dataclass
class Lab:
    emulator: Emulator
    instances: dict[str, Path]
    mde: Mde


def token_requests(emulator: Emulator) -> dict[str, int]:
    return emulator.counters()["token_requests"]


def api_requests(emulator: Emulator, route: str) -> int:
    return emulator.counters()["requests"].get(route, 0)

"""Start and stop the emulator as a subprocess and talk to its admin endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

READY_TIMEOUT = 60.0


def wait_until_ready(process: subprocess.Popen, ready_file: Path, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """The ready file's contents, once the emulator process has written it (it listens by then). This waits for
    a process to start, not for time to pass, so it polls the file system."""
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the emulator did not start within {timeout:.0f}s")
        time.sleep(0.05)
    return json.loads(ready_file.read_text())


class Emulator:
    """`with Emulator(machines=2000) as emu:` starts `python -m mde_emulator` on a free port and waits
    until it has written its ready file (base URLs, CA bundle, generated test credentials)."""

    def __init__(self, *, seed: int = 1, machines: int = 200, alerts: int = 100, workdir: Path | None = None,
                 extra_args: list[str] | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mde-emulator-"))
        self.args = ["--port", "0", "--seed", str(seed), "--machines", str(machines), "--alerts", str(alerts),
                     "--ready-file", str(self.ready_file), "--state-dir", str(self.workdir / "state"),
                     *(extra_args or [])]
        self.process: subprocess.Popen | None = None
        self.ready: dict[str, Any] = {}

    @property
    def ready_file(self) -> Path:
        return self.workdir / "ready.json"

    def start(self) -> Emulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        log = open(self.workdir / "emulator.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([sys.executable, "-m", "mde_emulator", *self.args], stdout=log,
                                        stderr=subprocess.STDOUT, env=clean_env())
        try:
            self.ready = wait_until_ready(self.process, self.ready_file)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; see {log.name}") from None
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- admin API -----------------------------------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        url = "/".join(filter(None, (self.ready["admin_url"], path.lstrip("/"))))
        response = requests.request(method, url, json=body, verify=self.ready["ca_bundle"], timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def counters(self) -> dict:
        return self.admin("GET", "counters")

    def reset_counters(self) -> None:
        self.admin("POST", "counters/reset")

    def set_faults(self, **faults: Any) -> dict:
        return self.admin("POST", "faults", faults)

    def advance_clock(self, seconds: float) -> dict:
        """Move the emulator's clock forward (action lifecycles, token expiry, rate-limit windows follow it)."""
        return self.admin("POST", "clock", {"advance": seconds})

    @contextmanager
    def frozen_clock(self) -> Iterator[None]:
        """Inside, the emulator's time passes only through advance_clock(); afterwards it runs again (forward).
        Nested, only the outermost block thaws it."""
        if self.admin("GET", "clock")["frozen"]:
            yield
            return
        self.admin("POST", "clock", {"frozen": True})
        try:
            yield
        finally:
            self.admin("POST", "clock", {"frozen": False})

    def summary(self) -> dict:
        """How many machines, alerts, actions (all and pending) and investigations the emulator holds."""
        return self.admin("GET", "")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that would redirect msal or requests."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
        "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
        "http_proxy", "MSAL_FORCE_REGION")}
    env.update(extra)
    return env

"""Run the `mde` CLI as a user would, as a subprocess."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lab.emulator import clean_env

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    """A finished process: its exit status and output, and what it cost (its own rusage, not its parent's)."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float  # user + system
    wall_seconds: float
    peak_mib: float  # maximum resident set size


def run_measured(argv: list[str], *, env: dict[str, str], cwd: Path = REPO, timeout: float = 600) -> Measured:
    """Run `argv` to completion and read its resource usage with wait4 (subprocess.run would discard it)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Measured(argv, process.returncode, out.read().decode("utf-8", "replace"),
                        err.read().decode("utf-8", "replace"), usage.ru_utime + usage.ru_stime, wall,
                        usage.ru_maxrss / 1024)  # Linux reports KiB


@dataclass
class Mde:
    """`mde` bound to one state directory and the environment the instance files need."""

    state_dir: Path
    env: dict[str, str]
    output_dir: Path | None = None
    timeout: float = 600

    def start(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Starts the command and returns at once (output through pipes), for a caller that acts while it runs."""
        return subprocess.Popen(self._argv(self.command_line(instance, command, *args, options=options)), cwd=REPO,
                                env=clean_env(**self.env, **(env or {})), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def command_line(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = ()) -> list[str]:
        line = ["mde"]
        if instance:
            line += ["--instance", str(instance)]
        return [*line, *options, command, *args]

    def run_measured(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = (),
                     extra_env: dict[str, str] | None = None) -> Measured:
        return run_measured(self._argv(self.command_line(instance, command, *args, options=options)),
                            env=clean_env(**self.env, **(extra_env or {})), timeout=self.timeout)

    def run(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = (),
            check: bool = False) -> subprocess.CompletedProcess:
        shown = self.command_line(instance, command, *args, options=options)
        result = subprocess.run(self._argv(shown), cwd=REPO, env=clean_env(**self.env), capture_output=True,
                                text=True, timeout=self.timeout)
        result.shown = shlex.join(shown)  # type: ignore[attr-defined]
        if check and result.returncode != 0:
            raise RuntimeError(f"{result.shown} failed ({result.returncode}):\n{result.stderr}")
        return result

    def run_together(self, count: int, instance: Path | None, command: str, *args: str,
                     options: tuple[str, ...] = ()) -> list[subprocess.CompletedProcess]:
        """Starts `count` identical runs at once (as many playbooks would) and waits for all of them."""
        argv = self._argv(self.command_line(instance, command, *args, options=options))
        processes = [subprocess.Popen(argv, cwd=REPO, env=clean_env(**self.env), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(count)]
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=self.timeout)
            results.append(subprocess.CompletedProcess(argv, process.returncode, stdout, stderr))
        return results

    def _argv(self, shown: list[str]) -> list[str]:
        argv = [sys.executable, "-m", "xsoar_local.cli", "--state-dir", str(self.state_dir)]
        if self.output_dir:
            argv += ["--output-dir", str(self.output_dir)]
        return argv + shown[1:]

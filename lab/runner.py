"""Run the `mde` CLI as a user would, as a subprocess."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.emulator import clean_env

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Mde:
    """`mde` bound to one state directory and the environment the instance files need."""

    state_dir: Path
    env: dict[str, str]
    output_dir: Path | None = None
    timeout: float = 600

    def command_line(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = ()) -> list[str]:
        line = ["mde"]
        if instance:
            line += ["--instance", str(instance)]
        return [*line, *options, command, *args]

    def run(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = (),
            check: bool = False) -> subprocess.CompletedProcess:
        shown = self.command_line(instance, command, *args, options=options)
        result = subprocess.run(self._argv(shown), cwd=REPO, env=clean_env(**self.env), capture_output=True,
                                text=True, timeout=self.timeout)
        result.shown = shlex.join(shown)  # type: ignore[attr-defined]
        if check and result.returncode != 0:
            raise RuntimeError(f"{result.shown} failed ({result.returncode}):\n{result.stderr}")
        return result

    def start(self, instance: Path | None, command: str, *args: str, options: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> RunningMde:
        """Starts the command and returns at once, for a caller that acts while it runs."""
        shown = self.command_line(instance, command, *args, options=options)
        return RunningMde(self._argv(shown), clean_env(**self.env, **(env or {})), self.timeout)

    def _argv(self, shown: list[str]) -> list[str]:
        argv = [sys.executable, "-m", "xsoar_local.cli", "--state-dir", str(self.state_dir)]
        if self.output_dir:
            argv += ["--output-dir", str(self.output_dir)]
        return argv + shown[1:]


class RunningMde:
    """A started `mde`; its output goes to temporary files, so it never stalls on a full pipe."""

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float):
        self.argv, self.timeout = argv, timeout
        self.stdout = tempfile.TemporaryFile("w+")
        self.stderr = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self.stdout, stderr=self.stderr, text=True)

    def running(self, wait: float) -> bool:
        """Waits up to `wait` seconds for it to end; True while it still runs."""
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return True
        return False

    def finish(self) -> subprocess.CompletedProcess:
        try:
            self.process.wait(timeout=self.timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        outputs = []
        for stream in (self.stdout, self.stderr):
            stream.seek(0)
            outputs.append(stream.read())
            stream.close()
        return subprocess.CompletedProcess(self.argv, self.process.returncode, *outputs)

"""Run the `mde` CLI as a user would, as a subprocess."""

from __future__ import annotations

import shlex
import subprocess
import sys
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

"""The test suite under load: `make test-under-load [RUNS=5]`, or `python -m lab.under_load --runs 5 -- COMMAND`.

Starts busy loops (two unless told: one per core of a 2-core machine), runs COMMAND (default: pytest) RUNS times,
prints `passes/RUNS` and exits 0 only when every run passed. The busy loops are stopped however this ends (also on
Ctrl-C or SIGTERM), and each loop also ends by itself once this process is gone.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Checks now and then that its parent (this runner) still exists, so even a killed runner leaves no loop behind.
BUSY_LOOP = """\
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""
EXIT_INTERRUPTED = 130


@contextmanager
def busy_loops(count: int) -> Iterator[list[subprocess.Popen]]:
    # Their own session: Ctrl-C reaches the runner and the test run, and the runner stops the loops.
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL, start_new_session=True)
             for _ in range(count)]
    try:
        yield loops
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def run_under_load(command: list[str], runs: int, loops: int) -> int:
    """Returns how many of the runs passed."""
    passes = 0
    with busy_loops(loops) as started:
        print(f"busy loops: {' '.join(str(p.pid) for p in started)}", flush=True)
        for run in range(1, runs + 1):
            print(f"=== run {run}/{runs} under {loops} busy loops: {shlex.join(command)}", flush=True)
            code = subprocess.call(command)  # on Ctrl-C, call() kills the run before re-raising
            passes += code == 0
            print(f"=== run {run}/{runs}: {'passed' if code == 0 else f'FAILED (exit {code})'}", flush=True)
    return passes


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.under_load", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="how many times to run COMMAND (default 5)")
    parser.add_argument("--busy-loops", type=int, default=2, help="how many CPU busy loops (default 2)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the test command (default: pytest)")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if options.runs < 1 or options.busy_loops < 0:
        parser.error("--runs must be 1 or more and --busy-loops 0 or more")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        passes = run_under_load(command or [sys.executable, "-m", "pytest"], options.runs, options.busy_loops)
    except KeyboardInterrupt:
        print("interrupted: busy loops stopped", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(f"{passes}/{options.runs}", flush=True)
    return 0 if passes == options.runs else 1


if __name__ == "__main__":
    sys.exit(main())

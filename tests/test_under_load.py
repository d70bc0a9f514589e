"""lab.under_load: counts passing runs, and its busy loops never outlive it (also on Ctrl-C)."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def under_load(*argv: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab.under_load", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def busy_loop_pids(out: str) -> list[int]:
    line = next(line for line in out.splitlines() if line.startswith("busy loops: "))
    return [int(pid) for pid in line.split(": ", 1)[1].split()]


def running(pid: int, marker: str) -> bool:
    """Whether `pid` is still a live process running code that contains `marker` (a pid freed and reused by
    another process on a busy machine, or a zombie awaiting its reaper, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and marker in cmdline


def assert_gone(pids: list[int], marker: str = "getppid") -> None:
    assert pids
    for pid in pids:
        assert not running(pid, marker), f"process {pid} is still running"


def test_prints_passes_out_of_runs_and_fails_unless_all_passed(tmp_path):
    # passes the first time only
    once = f"import os, sys; p = {str(tmp_path / 'ran')!r}; first = not os.path.exists(p); open(p, 'w').close(); " \
           "sys.exit(0 if first else 3)"
    process = under_load("--runs", "2", "--busy-loops", "1", "--", sys.executable, "-c", once)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert "=== run 1/2: passed" in out and "=== run 2/2: FAILED (exit 3)" in out
    assert out.splitlines()[-1] == "1/2"
    assert_gone(busy_loop_pids(out))

    process = under_load("--runs", "2", "--busy-loops", "2", "--", sys.executable, "-c", "pass")
    out, err = process.communicate(timeout=120)
    assert (process.returncode, out.splitlines()[-1]) == (0, "2/2"), err
    assert len(busy_loop_pids(out)) == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_the_busy_loops_and_the_run(tmp_path, signum):
    started = tmp_path / "started"
    wait_for_signal = (f"import os, signal; open({str(started)!r} + '.tmp', 'w').write(str(os.getpid())); "
                       f"os.rename({str(started)!r} + '.tmp', {str(started)!r}); signal.pause()")
    process = under_load("--runs", "3", "--busy-loops", "1", "--", sys.executable, "-c", wait_for_signal)
    try:
        while not started.exists():  # the run has started (the loops before it)
            assert process.poll() is None, process.communicate()
            try:
                process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "interrupted: busy loops stopped" in err and "=== run 2/3" not in out
    assert_gone(busy_loop_pids(out))
    assert_gone([int(started.read_text())], marker="signal.pause")

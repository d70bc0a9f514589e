"""Instance files that are not what they should be, state writes killed mid-way, and the fetch lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xsoar_local import cli
from xsoar_local.instance import InstanceError, load_instance
from xsoar_local.state import FileStore
from xsoar_local.yml import load_integration

ROOT = Path(__file__).resolve().parent.parent
FAKE_YML = Path(__file__).parent / "fake_integration" / "FakeIntegration.yml"


@pytest.fixture(scope="module")
def mde_integration():
    return load_integration(ROOT / "MicrosoftDefenderForEndpoint.yml")


# ---- instance files -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["not a url", "ftp://host/x", "https://", "42"])
def test_a_url_parameter_that_is_not_a_url_names_file_and_parameter(tmp_path, mde_integration, value):
    path = tmp_path / "tenant.yml"
    path.write_text(f"params:\n  endpoint_type: Custom\n  url: {json.dumps(value)}\n")
    with pytest.raises(InstanceError) as error:
        load_instance(path, mde_integration, environ={})
    assert str(error.value).startswith(f"{path}: parameter 'url' must be a URL")


@pytest.mark.parametrize("content", [bytes(range(256)), b"params:\n  url: https://x\x00\n", b"\x89PNG\r\n\x1a\n\xff"])
def test_a_binary_instance_file_names_the_file(tmp_path, mde_integration, content):
    path = tmp_path / "tenant.yml"
    path.write_bytes(content)
    with pytest.raises(InstanceError) as error:
        load_instance(path, mde_integration, environ={})
    assert str(error.value).startswith(f"{path}: not a text file")


@pytest.mark.parametrize("name", ["insecure", "proxy", "is_gcc"])
def test_a_checkbox_that_is_not_a_boolean_names_file_and_parameter(tmp_path, mde_integration, name):
    path = tmp_path / "tenant.yml"
    path.write_text(f"params:\n  {name}: maybe\n")
    with pytest.raises(InstanceError) as error:
        load_instance(path, mde_integration, environ={})
    assert str(error.value) == f"{path}: parameter '{name}' is a checkbox: set it to true or false (got 'maybe')"


def test_the_cli_reports_a_bad_instance_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "tenant.yml"
    path.write_text("params:\n  insecure: perhaps\n")
    code = cli.main(["--integration", str(FAKE_YML), "--state-dir", str(tmp_path / "s"), "--instance", str(path),
                     "test-module"])
    assert code == 2
    assert capsys.readouterr().err == (f"error: {path}: parameter 'insecure' is a checkbox: set it to true or false "
                                       "(got 'perhaps')\n")


# ---- state files ---------------------------------------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from xsoar_local.state import FileStore
    store = FileStore(sys.argv[1])
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die after writing the temporary file
    store.set_context({"v": "new"})
""")


def test_a_writer_killed_mid_write_leaves_no_temporary_file_and_no_corrupt_state(tmp_path):
    store = FileStore(tmp_path)
    store.set_context({"v": "old"})
    for _ in range(3):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=ROOT)
        assert killed.returncode == -9
    assert [p.name for p in tmp_path.glob(".*.tmp")]  # what the killed writers left behind

    assert store.get_context() == {"v": "old"}  # the next run that opens the state removes them
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "integration_context.json"]
    store.set_context({"v": "newer"})
    assert json.loads((tmp_path / "integration_context.json").read_text())["context"] == {"v": "newer"}


HOLDS_FETCH_LOCK = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(os.path.join(sys.argv[1], ".fetch.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("free")
    except BlockingIOError:
        print("held")
""")


def test_the_fetch_lock_excludes_other_processes(tmp_path):
    store = FileStore(tmp_path)

    def probe() -> str:
        return subprocess.run([sys.executable, "-c", HOLDS_FETCH_LOCK, str(tmp_path)], capture_output=True,
                              text=True, check=True).stdout.strip()

    with store.fetch_lock():
        assert probe() == "held"
        assert store.get_context() == {}  # the state stays usable during a fetch
    assert probe() == "free"


def test_fetch_holds_the_lock_and_says_when_the_last_run_was_not_saved(tmp_path, capsys, monkeypatch):
    instance = tmp_path / "tenant.yml"
    instance.write_text("params:\n  url: https://fake.example\n  max_fetch: 'not a number'\n")
    held = []
    original = FileStore.fetch_lock

    def recording_lock(self):
        held.append(self.directory)
        return original(self)

    monkeypatch.setattr(FileStore, "fetch_lock", recording_lock)
    code = cli.main(["--integration", str(FAKE_YML), "--state-dir", str(tmp_path / "state"), "--instance",
                     str(instance), "fetch"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "fetched 0 incident(s); last run not saved" in out
    assert "last run saved" not in out
    assert held == [tmp_path / "state" / "tenant"]

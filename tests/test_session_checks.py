"""The declared-output-path check of tests/conftest.py runs on a full run only: a subset or --collect-only exits 0."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS_DIR, is_full_run

REPO = TESTS_DIR.parent
ALL = set(TESTS_DIR.glob("test_*.py"))
FULL = dict(collect_only=False, args=["tests"], deselected=0, collected_files=ALL, test_files=ALL)


def test_a_plain_run_of_every_test_file_is_full():
    assert is_full_run(**FULL)
    assert is_full_run(**{**FULL, "args": [str(path) for path in sorted(ALL)]})


@pytest.mark.parametrize("narrowed", [
    {"collect_only": True},
    {"deselected": 1},  # -k, -m, --deselect, --lf
    {"args": ["tests/test_auth.py::test_one", *sorted(map(str, ALL))]},
    {"collected_files": ALL - {TESTS_DIR / "test_auth.py"}},
    {"collected_files": ALL | {Path("/elsewhere/test_other.py")}},
])
def test_anything_less_is_not(narrowed):
    assert not is_full_run(**{**FULL, **narrowed})


def pytest_in_subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_")}  # not measured by the outer run
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_collect_only_exits_0():
    result = pytest_in_subprocess("--collect-only")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "declared output paths" not in result.stdout


def test_a_subset_of_files_exits_0():
    # The contract test plus four other files: enough for the check's earlier guess at "a full run".
    files = ["test_contract.py", "test_examples.py", "test_runtime.py", "test_cli.py", "test_client.py"]
    result = pytest_in_subprocess(*(f"tests/{name}" for name in files))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "declared output paths" not in result.stdout

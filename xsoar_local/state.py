"""Integration context and last run, kept in memory or in a per-instance state directory.

On disk: `integration_context.json` holds `{"context": {...}, "version": n}` and `last_run.json` the
last-run object. Files are 0600 in a 0700 directory, replaced atomically, and each get/set holds an
exclusive flock on `.lock`, so concurrent runs never see half-written files. Read-modify-write across
runs is made safe by the versioned pair: a set with a stale version raises StaleVersionError.
A writer killed mid-write leaves a temporary file; the next run that takes the lock removes it.
`fetch_lock()` (flock on `.fetch.lock`) makes fetches of one instance run one at a time, as in XSOAR.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

CONTEXT_FILE = "integration_context.json"
LAST_RUN_FILE = "last_run.json"
LOCK_FILE = ".lock"
FETCH_LOCK_FILE = ".fetch.lock"
TEMP_SUFFIX = ".tmp"
NO_VERSION_CHECK = -1


class StateError(Exception):
    """The state directory or one of its files cannot be used."""


class StaleVersionError(StateError):
    """setIntegrationContextVersioned was given a version older than the stored one."""


class Store:
    """Versioned integration context and last run; subclasses say where the data lives and how to lock it."""

    def _lock(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def fetch_lock(self) -> contextlib.AbstractContextManager:
        """Held for a whole fetch-incidents run: one fetch per instance at a time."""
        raise NotImplementedError

    def _read(self, name: str) -> object:
        raise NotImplementedError

    def _write(self, name: str, obj: object) -> None:
        raise NotImplementedError

    def get_context_versioned(self) -> dict:
        with self._lock():
            return self._read_context()

    def set_context_versioned(self, context: dict, version: int = NO_VERSION_CHECK) -> int:
        with self._lock():
            stored = self._read_context()["version"]
            if version != NO_VERSION_CHECK and version != stored:
                raise StaleVersionError(
                    f"integration context version {version} is stale (stored version is {stored}); "
                    "read it again and retry")
            self._write(CONTEXT_FILE, {"context": context, "version": stored + 1})
            return stored + 1

    def get_context(self) -> dict:
        return self.get_context_versioned()["context"]

    def set_context(self, context: dict) -> None:
        self.set_context_versioned(context)

    def get_last_run(self) -> object:
        with self._lock():
            data = self._read(LAST_RUN_FILE)
            return {} if data is None else data

    def set_last_run(self, obj: object) -> None:
        with self._lock():
            self._write(LAST_RUN_FILE, obj)

    def _read_context(self) -> dict:
        data = self._read(CONTEXT_FILE)
        if data is None:
            return {"context": {}, "version": 0}
        if not isinstance(data, dict) or not isinstance(data.get("context"), dict) or "version" not in data:
            raise StateError(f"{self._describe(CONTEXT_FILE)} does not hold {{'context': {{...}}, 'version': n}}")
        return data

    def _describe(self, name: str) -> str:
        return name


class MemoryStore(Store):
    """The default store: nothing survives the process (what tests and a bare `import demistomock` get)."""

    def __init__(self) -> None:
        self._data: dict[str, object] = {}
        self._mutex = threading.RLock()
        self._fetch_mutex = threading.Lock()

    def _lock(self) -> contextlib.AbstractContextManager:
        return self._mutex

    def fetch_lock(self) -> contextlib.AbstractContextManager:
        return self._fetch_mutex

    def _read(self, name: str) -> object:
        return copy.deepcopy(self._data.get(name))

    def _write(self, name: str, obj: object) -> None:
        self._data[name] = copy.deepcopy(obj)


class FileStore(Store):
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _describe(self, name: str) -> str:
        return f"state file {self.directory / name}"

    def _lock(self) -> contextlib.AbstractContextManager:
        return self._flock(LOCK_FILE, clean=True)

    def fetch_lock(self) -> contextlib.AbstractContextManager:
        return self._flock(FETCH_LOCK_FILE)

    @contextlib.contextmanager
    def _flock(self, name: str, clean: bool = False) -> Iterator[None]:
        self._ensure_directory()
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if clean:
                self._remove_stale_temp_files()
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _remove_stale_temp_files(self) -> None:
        # Every write holds the lock we now hold: a temporary file seen now belongs to a writer that died.
        for path in self.directory.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                path.unlink()

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"cannot create state directory {self.directory}: {e.strerror}") from e

    def _read(self, name: str) -> object:
        path = self.directory / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {self._describe(name)}: {e.strerror}") from e
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            # Never discard it: it may hold a refresh token or the fetch cursor the user wants back.
            raise StateError(
                f"{self._describe(name)} is corrupt (line {e.lineno}, column {e.colno}: {e.msg}); "
                "fix it, or delete it to start from empty state") from e

    def _write(self, name: str, obj: object) -> None:
        write_atomically(self.directory / name, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a mix; the file is created 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def default_state_root() -> Path:
    if os.environ.get("MDE_STATE_DIR"):
        return Path(os.environ["MDE_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "mde"


def instance_state_dir(instance_name: str, root: str | Path | None = None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", instance_name).lstrip(".") or "default"
    return Path(root) / safe if root else default_state_root() / safe

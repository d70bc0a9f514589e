"""The runtime behind `demistomock`: what one command run sees of the platform.

`demistomock`'s functions call `current()` at call time, so the CLI swaps in a runtime per run with
`use(runtime)` and tests can patch either the runtime or the demistomock functions themselves.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from xsoar_local.state import MemoryStore, Store

LOCAL_INVESTIGATION_ID = "local"
LOCAL_SERVER_VERSION = "8.9.0"  # the platform version the local runtime reports (demistoVersion())


class Runtime:
    def __init__(
        self,
        *,
        params: dict | None = None,
        args: dict | None = None,
        command: str = "",
        store: Store | None = None,
        workdir: str | Path | None = None,
        verbose: bool = False,
    ) -> None:
        self._params = params or {}
        self._args = args or {}
        self._command = command
        self.store = store or MemoryStore()
        self._workdir = Path(workdir) if workdir else None
        self.user_dir = Path.cwd()  # where the user ran the CLI: file arguments are paths relative to it
        self.verbose = verbose
        self.entries: list = []  # everything passed to results(), flattened
        self.incidents: list | None = None  # set by incidents(); None when the plugin never called it
        self.last_run_saved = False  # whether the plugin called setLastRun()

    # -- what the plugin reads
    def params(self) -> dict:
        return copy.deepcopy(self._params)

    def args(self) -> dict:
        return dict(self._args)

    def command(self) -> str:
        return self._command

    def investigation(self) -> dict:
        return {"id": LOCAL_INVESTIGATION_ID}

    def demisto_version(self) -> dict:
        return {"version": LOCAL_SERVER_VERSION, "buildNumber": "local"}

    def unique_file(self) -> str:
        return uuid.uuid4().hex

    def get_file_path(self, entry_id: str) -> dict:
        """XSOAR resolves a file entry ID to the file's local path; locally the "entry ID" is the path itself."""
        path = (self.user_dir / str(entry_id)).resolve()
        if not path.is_file():
            raise ValueError(f"no file at {path}")
        return {"path": str(path), "name": path.name}

    @property
    def workdir(self) -> Path:
        """Where the plugin's relative file paths land (the CLI runs the plugin with this as cwd)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="xsoar-local-"))
        return self._workdir

    # -- what the plugin hands back
    def results(self, entry: object) -> None:
        if isinstance(entry, list):
            self.entries.extend(entry)
        else:
            self.entries.append(entry)

    def set_incidents(self, incidents: list | None) -> None:
        self.incidents = list(incidents or [])

    def set_last_run(self, obj: object) -> None:
        self.store.set_last_run(obj)
        self.last_run_saved = True

    # -- logging: stderr only, so stdout stays the command's output
    def log(self, level: str, message: object) -> None:
        # Like XSOAR's server log: shown with --verbose only. Errors reach the user as error entries.
        if self.verbose:
            print(f"[{level}] {message}", file=sys.stderr)


_current = Runtime()


def current() -> Runtime:
    return _current


def set_current(runtime: Runtime) -> Runtime:
    """Install `runtime` behind demistomock; returns the previous one."""
    global _current
    previous, _current = _current, runtime
    return previous


@contextlib.contextmanager
def use(runtime: Runtime) -> Iterator[Runtime]:
    previous = set_current(runtime)
    try:
        yield runtime
    finally:
        set_current(previous)

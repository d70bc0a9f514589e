"""Local stand-in for the XSOAR platform's `demisto` object: `import demistomock as demisto`.

Each function looks up `xsoar_local.runtime.current()` when called, so the CLI can install a runtime
per run and unit tests can `monkeypatch.setattr(demistomock, "params", lambda: {...})`.
"""

from __future__ import annotations


class _LazyRuntime:
    """xsoar_local.runtime, imported on the first platform call: importing the plugin stays as cheap as it is
    inside XSOAR (the bench measures it)."""

    def __getattr__(self, name: str):
        from xsoar_local import runtime

        return getattr(runtime, name)


_runtime = _LazyRuntime()


def params() -> dict:
    return _runtime.current().params()


def args() -> dict:
    return _runtime.current().args()


def command() -> str:
    return _runtime.current().command()


def results(results) -> None:
    _runtime.current().results(results)


def demistoVersion() -> dict:
    return _runtime.current().demisto_version()


def getIntegrationContext() -> dict:
    return _runtime.current().store.get_context()


def setIntegrationContext(context: dict) -> None:
    _runtime.current().store.set_context(context)


def getIntegrationContextVersioned(refresh: bool = False) -> dict:
    return _runtime.current().store.get_context_versioned()


def setIntegrationContextVersioned(context: dict, version: int = -1, sync: bool = False) -> None:
    _runtime.current().store.set_context_versioned(context, version)


def getLastRun():
    return _runtime.current().store.get_last_run()


def setLastRun(obj) -> None:
    _runtime.current().set_last_run(obj)


def incidents(incidents=None) -> None:
    _runtime.current().set_incidents(incidents)


def investigation() -> dict:
    return _runtime.current().investigation()


def uniqueFile() -> str:
    return _runtime.current().unique_file()


def getFilePath(id: str) -> dict:  # noqa: A002 - the platform's signature
    """{"path", "name"} of a file entry (locally: the entry ID is a path relative to where the CLI ran)."""
    return _runtime.current().get_file_path(id)


def debug(msg, *args) -> None:
    _runtime.current().log("debug", msg)


def info(msg, *args) -> None:
    _runtime.current().log("info", msg)


def error(msg, *args) -> None:
    _runtime.current().log("error", msg)


def log(msg) -> None:
    _runtime.current().log("debug", msg)


def getParam(name: str):
    return params().get(name)


def getArg(name: str):
    return args().get(name)


def get(obj, path: str, default=None):
    """Follow a dotted path through nested dicts (`get(ctx, "a.b")`); `default` when any step is missing."""
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj

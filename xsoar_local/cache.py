"""What every CLI run would otherwise redo: parsing the integration yml and compiling the plugin.

Both are kept in a cache directory, keyed by a hash of the source (and, for compiled code, the
Python version and file name), so an edited yml or plugin is never served stale. The cache is
disposable: a missing, unwritable or damaged cache only costs the work it would have saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import os
import sys
import tempfile
from pathlib import Path
from types import CodeType

CACHE_DIR_NAME = ".cache"  # inside the state root; instance names never start with a dot
YML_FORMAT = "yml-json-1"


def cache_dir_for(state_root: Path) -> Path:
    return state_root / CACHE_DIR_NAME


class YamlError(ValueError):
    """Malformed YAML; `line` and `column` (1-based) when the parser knows where."""

    def __init__(self, message: str, problem: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.problem, self.line, self.column = problem, line, column


def load_yml(source: bytes, cache_dir: Path | None, kind: str) -> object:
    """YAML parsed (C loader when PyYAML has it), or its cached JSON form: a cache hit does not even import
    PyYAML. `kind` names the document, so each kept document has one cache entry."""
    entry = _entry(cache_dir, kind, source, YML_FORMAT, ".json")
    if entry is not None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(entry.read_bytes())
    data = parse_yaml(source)
    if entry is not None:
        with contextlib.suppress(TypeError, ValueError):  # a value JSON cannot hold (a date): parse each time
            _store(entry, json.dumps(data, separators=(",", ":")).encode())
    return data


def parse_yaml(source: bytes | str) -> object:
    import yaml  # here, not at the top: most runs are served from the cache

    try:
        return yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlError(str(e), problem, *((mark.line + 1, mark.column + 1) if mark else ())) from e


def compile_plugin(path: Path, cache_dir: Path | None) -> CodeType:
    """The plugin's code object; PYTHONDONTWRITEBYTECODE machines would otherwise recompile it every run."""
    source = path.read_bytes()
    entry = _entry(cache_dir, path.stem, source, f"{sys.implementation.cache_tag}:{path}", ".code")
    if entry is not None:
        with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
            code = marshal.loads(entry.read_bytes())
            if isinstance(code, CodeType):
                return code
    code = compile(source, str(path), "exec", dont_inherit=True)
    if entry is not None:
        _store(entry, marshal.dumps(code))
    return code


def _entry(cache_dir: Path | None, kind: str, source: bytes, variant: str, suffix: str) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(variant.encode() + b"\0" + source).hexdigest()[:32]
    return cache_dir / f"{kind}-{digest}{suffix}"


def _store(entry: Path, data: bytes) -> None:
    """Write atomically and drop the entries of older sources of the same kind; failures are ignored."""
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, entry)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        return
    kind = entry.name.rsplit("-", 1)[0]
    for old in entry.parent.glob(f"{kind}-*{entry.suffix}"):
        if old != entry and old.name.rsplit("-", 1)[0] == kind:
            with contextlib.suppress(OSError):
                old.unlink()

"""Instance file: the parameters of an XSOAR instance, in YAML or JSON.

    name: my-tenant                  # optional; names the state directory (default: the file's stem)
    env:                             # optional; environment variables set for the run
      REQUESTS_CA_BUNDLE: /path/ca.pem
    params:                          # what demisto.params() returns
      credentials_id: {password: "<app id>"}
      secret: {password: "${MDE_CLIENT_SECRET}"}

`${VAR}` anywhere in a string value is replaced from the environment (after `env:` is applied), so
secrets can stay out of the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from xsoar_local.cache import YamlError, load_yml
from xsoar_local.yml import BOOLEAN_PARAM, Integration

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KNOWN_KEYS = {"name", "params", "env"}


class InstanceError(Exception):
    """The instance file cannot be used; the message names the file and what is wrong."""


@dataclass
class Instance:
    path: Path
    name: str
    params: dict
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def load_instance(path: str | Path, integration: Integration | None = None, environ: dict | None = None,
                  cache_dir: Path | None = None) -> Instance:
    """With `cache_dir`, a YAML file's parsed form is kept there (0600, like the saved tokens) while it is unchanged."""
    path = Path(path)
    data = _parse(path, cache_dir)
    environ = dict(os.environ if environ is None else environ)
    warnings = [f"warning: {path}: unknown top-level key '{k}' (expected name, params, env)"
                for k in data if k not in KNOWN_KEYS]
    env: dict[str, str] = {}
    for key, value in _mapping(data, "env", path).items():  # in order: later entries may use earlier ones
        env[str(key)] = str(_expand(value, {**environ, **env}, path, f"env.{key}"))
    params = _expand(_mapping(data, "params", path), {**environ, **env}, path, "params")
    _check_urls(params, path)
    if integration is not None:
        warnings += _check_params(params, integration, path)
        params = _with_defaults(params, integration, path)
    return Instance(path=path, name=str(data.get("name") or path.stem), params=params, env=env, warnings=warnings)


def _parse(path: Path, cache_dir: Path | None) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InstanceError(f"{path}: cannot read instance file: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise InstanceError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                            "UTF-8); an instance file is YAML or JSON text") from None
    if "\x00" in text:
        raise InstanceError(f"{path}: not a text file (it contains NUL bytes); an instance file is YAML or JSON text")
    if path.suffix.lower() == ".json" or (path.suffix.lower() not in (".yml", ".yaml") and text.lstrip()[:1] == "{"):
        data = _parse_json(path, text)
    else:
        data = _parse_yaml(path, text, cache_dir)
    if not isinstance(data, dict):
        raise InstanceError(f"{path}: an instance file is a mapping with a 'params:' key")
    return data


def _parse_json(path: Path, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InstanceError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e


def _parse_yaml(path: Path, text: str, cache_dir: Path | None) -> object:
    try:
        return load_yml(text.encode("utf-8"), cache_dir, kind="instance-" + re.sub(r"[^A-Za-z0-9_.]", "_", path.stem))
    except YamlError as e:
        where = f"{e.line}:{e.column}:" if e.line else ""
        raise InstanceError(f"{path}:{where} malformed YAML: {e.problem}") from e


def _mapping(data: dict, key: str, path: Path) -> dict:
    value = data.get(key)
    if value is None:
        if key == "params":
            raise InstanceError(f"{path}: no 'params:' mapping (the instance's parameters go there)")
        return {}
    if not isinstance(value, dict):
        raise InstanceError(f"{path}: '{key}:' must be a mapping of names to values")
    return value


def _expand(value: object, environ: dict, path: Path, where: str) -> object:
    if isinstance(value, dict):
        return {k: _expand(v, environ, path, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in environ:
            raise InstanceError(f"{path}: environment variable {name} is not set (used in {where})")
        return environ[name]

    return ENV_REFERENCE.sub(substitute, value)


def _check_params(params: dict, integration: Integration, path: Path) -> list[str]:
    known = {p.name for p in integration.params}
    warnings = [f"warning: {path}: unknown parameter '{name}' (not in {integration.yml_path.name}'s configuration)"
                for name in params if name not in known]
    warnings += [f"warning: {path}: required parameter '{p.name}' ({p.display or p.name}) is not set"
                 for p in integration.params if p.required and not p.hidden and p.name not in params]
    return warnings


def _check_urls(params: dict, path: Path) -> None:
    """Parameters named `url` or `*_url` (the platform's convention for server addresses) must be URLs."""
    for name, value in params.items():
        if not (name == "url" or name.endswith("_url")) or value in (None, ""):
            continue
        parsed = urlparse(value) if isinstance(value, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or " " in value:
            raise InstanceError(f"{path}: parameter '{name}' must be a URL such as https://host[:port][/path] "
                                f"(got {value!r})")


def _with_defaults(params: dict, integration: Integration, path: Path) -> dict:
    result = dict(params)
    for p in integration.params:
        if p.name not in result and p.default_value is not None:
            result[p.name] = _as_platform_value(p.default_value, p.type)
        if p.type == BOOLEAN_PARAM and p.name in result:
            result[p.name] = _to_bool(result[p.name], path, p.name)
    return result


def _as_platform_value(default: object, param_type: int) -> object:
    # yml `defaultvalue: 50` parses as an int, but XSOAR hands text params to the plugin as strings.
    if param_type != BOOLEAN_PARAM and isinstance(default, int | float):
        return str(default)
    return default


def _to_bool(value: object, path: Path, name: str) -> bool:
    # XSOAR hands checkbox (type 8) params to the plugin as Python bools.
    if isinstance(value, bool):
        return value
    if value is None or value == "":  # an unset checkbox
        return False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InstanceError(f"{path}: parameter '{name}' is a checkbox: set it to true or false (got {value!r})")

"""`python -m xsoar_local.package --out dist`: the unified yml an XSOAR admin uploads.

The yml gets the .py as `script.script` and a docker image that carries the plugin's dependencies.
In XSOAR `demisto` is provided by the platform, so the `import demistomock as demisto` line is removed
(as demisto-sdk's unify does).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from xsoar_local.yml import Integration, load_integration

DEFAULT_YML = "MicrosoftDefenderForEndpoint.yml"
# What the docker image provides besides the standard library (urllib3 comes with requests).
ALLOWED_THIRD_PARTY = {"requests", "msal", "cryptography", "urllib3", "demistomock"}
DEMISTOMOCK_IMPORT = re.compile(r"^import demistomock as demisto[ \t]*(#.*)?\n", re.MULTILINE)


class PackageError(Exception):
    pass


def disallowed_imports(source: str, filename: str = "<integration>") -> list[str]:
    """Top-level names the docker image would not have, as `module (line N)`."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as e:
        raise PackageError(f"{filename}:{e.lineno}: syntax error: {e.msg}") from e
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{name} (line {node.lineno})" for name in names if name.split(".")[0] not in allowed]
    return found


def checked_script(integration: Integration, docker_image: str) -> str:
    """The integration's code, refused if it imports what the docker image may not have."""
    script_path, yml_path = integration.script_path, integration.yml_path
    if script_path is None or not script_path.exists():
        raise PackageError(f"no integration code next to {yml_path} (expected {yml_path.with_suffix('.py').name})")
    source = script_path.read_text(encoding="utf-8")
    bad = disallowed_imports(source, str(script_path))
    if bad:
        raise PackageError(f"{script_path.name} imports modules the docker image {docker_image} may not have: "
                           f"{', '.join(bad)}; use only the standard library, requests, msal and cryptography")
    return source


def unified_yml(yml_path: Path, docker_image: str | None = None) -> tuple[str, dict]:
    """`docker_image` None keeps the yml's own image (a demisto/crypto tag that carries requests, msal and cryptography)."""
    integration = load_integration(yml_path)
    docker_image = docker_image or (integration.raw.get("script") or {}).get("dockerimage") or ""
    source = checked_script(integration, docker_image)
    source, removed = DEMISTOMOCK_IMPORT.subn("", source)
    if re.search(r"^\s*(import|from)\s+demistomock\b", source, re.MULTILINE) or not removed:
        raise PackageError(f"{integration.script_path.name} must import the platform as exactly `import demistomock as demisto`")
    data = dict(integration.raw)
    data["script"] = {**(data.get("script") or {}), "script": source, "dockerimage": docker_image}
    return f"integration-{yml_path.stem}.yml", data


class _LiteralDumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # keep the embedded code readable in the uploaded file
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def build(yml_path: Path, out_dir: Path, docker_image: str | None = None) -> Path:
    name, data = unified_yml(yml_path, docker_image)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    target.write_text(yaml.dump(data, Dumper=_LiteralDumper, sort_keys=False, allow_unicode=True, width=10_000),
                      encoding="utf-8")
    return target


def tool_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    """The options every packaging tool shares: where to write, and which integration."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", required=True, metavar="DIR", help=out_help)
    parser.add_argument("--integration", default=DEFAULT_YML, metavar="YML",
                        help=f"integration yml, with its .py beside it (default: {DEFAULT_YML})")
    return parser


def print_built(build_it: Callable[[], Path]) -> int:
    """Prints what a packaging tool wrote, or its error in one line; the exit code."""
    try:
        print(build_it())
    except (PackageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m xsoar_local.package", "Write the unified integration yml to upload to XSOAR.",
                         "output directory, e.g. dist")
    parser.add_argument("--docker-image", default=None,
                        help="image the integration runs in; it must carry msal (default: the yml's dockerimage)")
    options = parser.parse_args(argv)
    return print_built(lambda: build(Path(options.integration), Path(options.out), options.docker_image))


if __name__ == "__main__":
    sys.exit(main())

"""Read an integration yml: commands, their arguments and outputs, and the configuration parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xsoar_local.cache import YamlError, load_yml

# Commands XSOAR provides to every integration without listing them under script.commands.
TEST_MODULE = "test-module"
FETCH_INCIDENTS = "fetch-incidents"
BOOLEAN_PARAM = 8


@dataclass
class Argument:
    name: str
    required: bool = False
    description: str = ""
    predefined: list[str] = field(default_factory=list)
    default_value: str | None = None
    is_array: bool = False
    positional: bool = False  # the yml's `default: true`: a bare value on the command line goes here
    deprecated: bool = False


@dataclass
class Output:
    context_path: str
    type: str = ""
    description: str = ""


@dataclass
class Command:
    name: str
    description: str = ""
    arguments: list[Argument] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    deprecated: bool = False

    def argument(self, name: str) -> Argument | None:
        return next((a for a in self.arguments if a.name == name), None)


@dataclass
class Param:
    name: str
    display: str = ""
    type: int = 0
    required: bool = False
    default_value: object = None
    options: list[str] = field(default_factory=list)
    hidden: bool = False


@dataclass
class Integration:
    yml_path: Path
    name: str
    display: str
    description: str
    commands: dict[str, Command]
    params: list[Param]
    script: str  # script.script as written: '' or '-' in a source yml, the code in a unified one
    raw: dict

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def script_path(self) -> Path | None:
        """The .py to run: `script.script` when it names a file, else the .py beside the yml; None if embedded."""
        script = self.script.strip()
        if script.endswith(".py") and "\n" not in script:
            return (self.yml_path.parent / script).resolve()
        if script in ("", "-"):
            return self.yml_path.with_suffix(".py")
        return None


def load_integration(yml_path: str | Path, cache_dir: Path | None = None) -> Integration:
    """The yml's commands and parameters; with `cache_dir`, the parsed form is reused while the file is unchanged."""
    path = Path(yml_path).resolve()
    try:
        raw = load_yml(path.read_bytes(), cache_dir, kind=f"integration-{path.stem}") or {}
    except OSError as e:
        raise ValueError(f"cannot read integration yml {path}: {e.strerror}") from e
    except YamlError as e:
        raise ValueError(f"{path}: malformed yml: {e}") from e
    script = raw.get("script") or {}
    commands = {c["name"]: _command(c) for c in script.get("commands") or []}
    commands.setdefault(TEST_MODULE, Command(TEST_MODULE, "Test the instance configuration (the Test button)."))
    if script.get("isfetch"):
        commands.setdefault(FETCH_INCIDENTS, Command(FETCH_INCIDENTS, "Fetch new incidents (run by the platform)."))
    return Integration(
        yml_path=path,
        name=raw.get("name") or path.stem,
        display=raw.get("display") or raw.get("name") or path.stem,
        description=raw.get("description") or "",
        commands=commands,
        params=[_param(p) for p in raw.get("configuration") or []],
        script=str(script.get("script") or ""),
        raw=raw,
    )


def _command(c: dict) -> Command:
    return Command(
        name=c["name"],
        description=c.get("description") or "",
        arguments=[_argument(a) for a in c.get("arguments") or []],
        outputs=[Output(o.get("contextPath", ""), o.get("type") or "", o.get("description") or "")
                 for o in c.get("outputs") or []],
        deprecated=bool(c.get("deprecated")),
    )


def _argument(a: dict) -> Argument:
    default = a.get("defaultValue")
    return Argument(
        name=a["name"],
        required=bool(a.get("required")),
        description=a.get("description") or "",
        predefined=[str(v) for v in a.get("predefined") or [] if str(v) != ""],
        default_value=None if default is None else _yml_scalar_to_str(default),
        is_array=bool(a.get("isArray")),
        positional=bool(a.get("default")),
        deprecated=bool(a.get("deprecated")),
    )


def _param(p: dict) -> Param:
    return Param(
        name=p["name"],
        display=p.get("display") or "",
        type=int(p.get("type") or 0),
        required=bool(p.get("required")),
        default_value=p.get("defaultvalue"),
        options=[str(v) for v in p.get("options") or []],
        hidden=bool(p.get("hidden")),
    )


def _yml_scalar_to_str(value: object) -> str:
    # XSOAR passes every argument as a string; YAML may have parsed `defaultValue: 50` or `true`.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

"""`python -m xsoar_local.docs INTEGRATION.yml`: a Markdown command reference generated from the yml."""

from __future__ import annotations

import sys

from xsoar_local.yml import FETCH_INCIDENTS, TEST_MODULE, Argument, Command, Integration, load_integration

IMPLICIT_COMMANDS = (TEST_MODULE, FETCH_INCIDENTS)


def command_reference(integration: Integration) -> str:
    lines = [f"# {integration.display}: command reference", ""]
    if integration.description:
        lines += [integration.description, ""]
    lines += ["Generated from the integration yml by `python -m xsoar_local.docs`; do not edit by hand.", ""]
    commands = [c for c in integration.commands.values() if c.name not in IMPLICIT_COMMANDS]
    lines += [f"- [{c.name}](#{c.name})" for c in commands] + [""]
    for command in commands:
        lines += command_section(command)
    return "\n".join(lines).rstrip() + "\n"


def command_section(command: Command) -> list[str]:
    title = command.name + (" (deprecated)" if command.deprecated else "")
    lines = [f"## {title}", "", command.description or "No description.", "", "### Arguments", ""]
    lines += table(("Name", "Required", "Description", "Options", "Default"),
                   [(a.name, "yes" if a.required else "no", _argument_description(a), ", ".join(a.predefined),
                     a.default_value or "") for a in command.arguments], empty="None.")
    lines += ["", "### Context outputs", ""]
    lines += table(("Path", "Type", "Description"),
                   [(o.context_path, o.type, o.description) for o in command.outputs], empty="None.")
    lines += ["", "### Example", "", "```", example(command), "```", ""]
    return lines


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]], *, empty: str) -> list[str]:
    """A Markdown table, or the `empty` sentence when there are no rows."""
    if not rows:
        return [empty]
    return [_row(*headers), "| " + " | ".join("---" for _ in headers) + " |", *(_row(*row) for row in rows)]


def example(command: Command) -> str:
    parts = [f"!{command.name}"]
    for arg in command.arguments:
        if arg.required:
            value = arg.default_value or (arg.predefined[0] if arg.predefined else f"<{arg.name}>")
            parts.append(f"{arg.name}={_quote(value)}")
    return " ".join(parts)


def _argument_description(arg: Argument) -> str:
    notes = [note for flag, note in ((arg.is_array, "Comma-separated list."), (arg.deprecated, "Deprecated.")) if flag]
    return " ".join([arg.description, *notes]).strip()


def _quote(value: str) -> str:
    return f'"{value}"' if " " in value else value


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m xsoar_local.docs INTEGRATION.yml > docs/commands.md", file=sys.stderr)
        return 2
    try:
        print(command_reference(load_integration(argv[0])), end="")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

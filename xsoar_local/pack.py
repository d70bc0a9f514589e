"""`python -m xsoar_local.pack --out dist`: the integration as a content pack, the way XSOAR's content repo holds it.

Writes `Packs/<Pack>/` with `pack_metadata.json`, release notes, and `Integrations/<Integration>/` holding the
yml (`script: '-'`, the detailed description moved to its own file), the script, `<Integration>_description.md`,
`<Integration>_image.png` and a README in XSOAR's command-reference format, all generated from the yml.
`demisto-sdk validate` runs on that folder (`make validate-xsoar`).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import yaml

from xsoar_local.docs import IMPLICIT_COMMANDS, _cell, table
from xsoar_local.package import checked_script, print_built, tool_parser
from xsoar_local.yml import Command, Integration, load_integration

PACK_NAME = "MicrosoftDefenderForEndpoint"
PACK_VERSION = "1.0.0"
PACK_CREATED = "2026-11-27T00:00:00Z"  # when this pack was first generated; a fixed value keeps builds reproducible


def pack_metadata(integration: Integration) -> dict:
    return {
        "name": integration.display,
        "description": integration.description.split(":")[0].strip() + ": machines, response actions, alerts, "
                       "investigations and incidents, as a drop-in replacement for the "
                       f"{integration.name} integration.",
        "support": "community",
        "currentVersion": PACK_VERSION,
        "author": "MDE XSOAR integration maintainers",
        "url": "",
        "email": "",
        "created": PACK_CREATED,
        "categories": [integration.raw.get("category") or "Endpoint"],
        "tags": ["Security"],
        "useCases": ["Malware", "Incident Response"],
        "keywords": ["Microsoft", "Defender", "Defender for Endpoint", "MDE", "ATP", "EDR"],
        "marketplaces": ["xsoar"],
        "dependencies": {},
    }


def release_notes(integration: Integration) -> str:
    image = integration.raw["script"]["dockerimage"]
    return "\n".join([
        "",
        "#### Integrations",
        "",
        f"##### {integration.display}",
        "",
        f"- Replaces the {integration.name} integration with the same brand, command names, arguments and context "
        "paths, so existing instances and playbooks keep working.",
        "- Response actions poll to completion by default and reuse an action already pending on a machine.",
        f"- Updated the Docker image to: *{image}*.",
        "",
    ])


def pack_yml(integration: Integration) -> dict:
    data = dict(integration.raw)
    data.pop("detaileddescription", None)  # the content repo keeps it in <Integration>_description.md
    data["script"] = {**data["script"], "script": "-"}
    return data


def description_md(integration: Integration) -> str:
    return (integration.raw.get("detaileddescription") or integration.description).strip() + "\n"


# ---- the integration README, in the format of `demisto-sdk generate-docs` ----

def integration_readme(integration: Integration) -> str:
    lines = [" ".join(integration.description.split()), "", f"## Configure {integration.display} in Cortex", ""]
    lines += table(("**Parameter**", "**Description**", "**Required**"),
                   [(p.get("display") or p.get("displaypassword") or p["name"], p.get("additionalinfo", ""),
                     str(bool(p.get("required")))) for p in integration.raw.get("configuration") or []
                    if not p.get("hidden")], empty="This integration has no parameters.")
    lines += ["", "## Commands", "",
              "You can execute these commands from the CLI, as part of an automation, or in a playbook.",
              "After you successfully execute a command, a DBot message appears in the War Room with the command "
              "details.", ""]
    for command in integration.commands.values():
        if command.name not in IMPLICIT_COMMANDS:
            lines += readme_command_section(command)
    return "\n".join(lines).rstrip() + "\n"


def readme_command_section(command: Command) -> list[str]:
    lines = [f"### {command.name}", "", "***", _cell(command.description), "",
             "#### Base Command", "", f"`{command.name}`", "", "#### Input", ""]
    lines += table(("**Argument Name**", "**Description**", "**Required**"),
                   [(a.name, _argument_text(a), "Required" if a.required else "Optional") for a in command.arguments],
                   empty="There are no input arguments for this command.")
    lines += ["", "#### Context Output", ""]
    lines += table(("**Path**", "**Type**", "**Description**"),
                   [(o.context_path, o.type, o.description) for o in command.outputs],
                   empty="There is no context output for this command.")
    return lines + [""]


def _argument_text(arg) -> str:
    text = arg.description
    if arg.predefined:
        text += " Possible values are: " + ", ".join(arg.predefined) + "."
    if arg.default_value:
        text += f" Default is {arg.default_value}."
    return text.strip()


# ---- the image: a 120x50 PNG (the size XSOAR shows), drawn here so the build needs nothing else ----

IMAGE_SIZE = (120, 50)
SHIELD_BLUE = (0, 103, 184, 255)
LETTERS = {  # 5x7 bitmaps
    "M": ["10001", "11011", "10101", "10101", "10001", "10001", "10001"],
    "D": ["11110", "10001", "10001", "10001", "10001", "10001", "11110"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
}


def image_pixels() -> list[list[tuple[int, int, int, int]]]:
    width, height = IMAGE_SIZE
    pixels = [[(0, 0, 0, 0)] * width for _ in range(height)]
    for y in range(4, 46):  # a shield: straight sides, then narrowing to a point
        half = 17 if y < 26 else max(0, 17 - (y - 26) * 17 // 20)
        for x in range(22 - half, 22 + half):
            pixels[y][x] = SHIELD_BLUE
    for index, letter in enumerate("MDE"):
        for row, bits in enumerate(LETTERS[letter]):
            for column, bit in enumerate(bits):
                if bit == "1":
                    for dy in range(4):
                        for dx in range(4):
                            pixels[11 + row * 4 + dy][46 + index * 24 + column * 4 + dx] = SHIELD_BLUE
    return pixels


def png_bytes(pixels: list[list[tuple[int, int, int, int]]]) -> bytes:
    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + b"".join(bytes(p) for p in row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# ---- writing the pack ----

def _dump_yml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)


def build_pack(yml_path: Path, out_dir: Path) -> Path:
    integration = load_integration(yml_path)
    source = checked_script(integration, integration.raw["script"]["dockerimage"])
    pack = out_dir / "Packs" / PACK_NAME
    name = yml_path.stem
    folder = pack / "Integrations" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yml").write_text(_dump_yml(pack_yml(integration)), encoding="utf-8")
    (folder / f"{name}.py").write_text(source, encoding="utf-8")
    (folder / f"{name}_description.md").write_text(description_md(integration), encoding="utf-8")
    (folder / f"{name}_image.png").write_bytes(png_bytes(image_pixels()))
    (folder / "README.md").write_text(integration_readme(integration), encoding="utf-8")
    (pack / "pack_metadata.json").write_text(json.dumps(pack_metadata(integration), indent=4) + "\n", encoding="utf-8")
    for marker in (".secrets-ignore", ".pack-ignore"):  # the content repo expects both, empty is fine
        (pack / marker).write_text("", encoding="utf-8")
    (pack / "README.md").write_text(f"{' '.join(integration.description.split())}\n", encoding="utf-8")
    notes = pack / "ReleaseNotes" / f"{PACK_VERSION.replace('.', '_')}.md"
    notes.parent.mkdir(exist_ok=True)
    notes.write_text(release_notes(integration), encoding="utf-8")
    return pack


def main(argv: list[str] | None = None) -> int:
    options = tool_parser("python -m xsoar_local.pack", "Write the integration as an XSOAR content pack folder.",
                          "output directory; the pack goes to DIR/Packs/").parse_args(argv)
    return print_built(lambda: build_pack(Path(options.integration), Path(options.out)))


if __name__ == "__main__":
    sys.exit(main())

"""The content pack (`make xsoar-pack`), the validator's selection (`make validate-xsoar`) and the README's coverage table."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import yaml

from xsoar_local import coverage, validate_pack
from xsoar_local.pack import PACK_NAME, build_pack
from xsoar_local.yml import load_integration

ROOT = Path(__file__).resolve().parent.parent
YML = ROOT / "MicrosoftDefenderForEndpoint.yml"


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and decoded scanlines; fails on a bad signature or checksum, as an image viewer would."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks[kind] = chunks.get(kind, b"") + body
        offset += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_pack_holds_every_file_the_content_repository_expects(tmp_path):
    pack = build_pack(YML, tmp_path)
    folder = pack / "Integrations" / "MicrosoftDefenderForEndpoint"
    assert pack == tmp_path / "Packs" / PACK_NAME
    assert sorted(p.name for p in folder.iterdir()) == [
        "MicrosoftDefenderForEndpoint.py", "MicrosoftDefenderForEndpoint.yml",
        "MicrosoftDefenderForEndpoint_description.md", "MicrosoftDefenderForEndpoint_image.png", "README.md"]
    assert (folder / "MicrosoftDefenderForEndpoint.py").read_bytes() == (ROOT / "MicrosoftDefenderForEndpoint.py").read_bytes()
    metadata = json.loads((pack / "pack_metadata.json").read_text())
    assert metadata["currentVersion"] == "1.0.0" and metadata["name"] and metadata["categories"] == ["Endpoint"]
    notes = (pack / "ReleaseNotes" / "1_0_0.md").read_text()
    assert "##### Microsoft Defender for Endpoint" in notes
    assert yaml.safe_load(YML.read_text())["script"]["dockerimage"] in notes


def test_pack_yml_keeps_the_script_and_description_beside_it(tmp_path):
    folder = build_pack(YML, tmp_path) / "Integrations" / "MicrosoftDefenderForEndpoint"
    source = yaml.safe_load(YML.read_text())
    packed = yaml.safe_load((folder / "MicrosoftDefenderForEndpoint.yml").read_text())
    assert packed["script"]["script"] == "-" and "detaileddescription" not in packed
    assert packed["script"]["commands"] == source["script"]["commands"]
    assert packed["configuration"] == source["configuration"]
    assert (folder / "MicrosoftDefenderForEndpoint_description.md").read_text().strip() == \
        source["detaileddescription"].strip()


def test_pack_image_is_a_valid_120_by_50_png_under_10_kb(tmp_path):
    data = (build_pack(YML, tmp_path) / "Integrations" / "MicrosoftDefenderForEndpoint" /
            "MicrosoftDefenderForEndpoint_image.png").read_bytes()
    width, height, scanlines = read_png(data)
    assert (width, height) == (120, 50) and len(data) < 10_000
    assert len(scanlines) == height * (1 + width * 4)
    assert any(byte for byte in scanlines[1:])  # something is drawn


def test_integration_readme_documents_every_command_in_xsoars_format(tmp_path):
    readme = (build_pack(YML, tmp_path) / "Integrations" / "MicrosoftDefenderForEndpoint" / "README.md").read_text()
    integration = load_integration(YML)
    for name, command in integration.commands.items():
        if name in ("test-module", "fetch-incidents"):
            continue
        section = readme.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"#### Base Command\n\n`{name}`" in section
        assert all(f"| {a.name} |" in section for a in command.arguments)
        assert all(f"| {o.context_path} |" in section for o in command.outputs)
    visible = [p for p in integration.raw["configuration"] if not p.get("hidden")]
    assert all(f"| {p.get('display') or p.get('displaypassword')} |" in readme for p in visible)
    assert "| First fetch timestamp (Deprecated) |" not in readme  # hidden legacy parameters stay out


def test_validator_selection_skips_graph_network_and_content_repo_checks(tmp_path):
    folder = tmp_path / "IN_validators"
    folder.mkdir()
    modules = {}
    for name, body in {"IN126_fetch.py": "return []", "GR100_graph.py": "return []",
                       "PA124_deps.py": "self.graph.find()", "PA124_deps_list_files.py": "return []",
                       "DO103_hub.py": "return []", "RM109_readme.py": "return []"}.items():
        (folder / name).write_text(body)
        modules.setdefault(name[:5], []).append(folder / name)
    codes, skipped = validate_pack.selected_codes(modules)
    assert codes == ["IN126", "RM109"]
    assert set(skipped) >= {"GR100", "PA124", "DO103"}
    assert "Docker Hub" in skipped["DO103"] and "graph" in skipped["PA124"]


def test_readme_coverage_table_is_current():
    expected = coverage.current_readme(ROOT / "README.md", YML, ROOT / "test_data" / "contract_commands.json")
    assert (ROOT / "README.md").read_text() == expected, "README coverage table is stale: run `make readme-coverage`"


def test_coverage_table_never_claims_a_command_the_yml_lacks():
    contract = {"commands": [{"name": "a", "area": "x"}, {"name": "b", "area": "x", "deprecated": True}]}
    table = coverage.coverage_table({"a": object(), "c": object()}, contract)
    assert table.startswith("1 of the original's 2 commands exist here; 1 do not yet; 1 command is new.")
    assert "| `b` | x | yes (deprecated) | **not yet** |" in table
    assert "| `c` | - | no | yes (new) |" in table

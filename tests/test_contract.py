"""The yml is a valid XSOAR integration, a drop-in replacement for the contract, and matches the code."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from pykwalify.core import Core

import MicrosoftDefenderForEndpoint as mde

ROOT = Path(__file__).resolve().parent.parent
YML = yaml.safe_load((ROOT / "MicrosoftDefenderForEndpoint.yml").read_text())
SHARED_CONTRACT = ROOT.parent / "shared" / "contract" / "commands.json"
CONTRACT = json.loads((SHARED_CONTRACT if SHARED_CONTRACT.exists() else ROOT / "test_data" /
                       "contract_commands.json").read_text())
# The areas of the contract this integration implements so far.
IMPLEMENTED_AREAS = {
    "auth_test", "machines", "machine_actions", "alerts", "investigations",
    # advanced hunting
    "advanced_hunting",

    # indicators
    "indicators_sc", "indicators_legacy_graph",
    # live response and reputation
    "live_response", "entity_lookups_reputation",
    # vulnerability management
    "tvm",
}
YML_COMMANDS = {c["name"]: c for c in YML["script"]["commands"]}
PLATFORM_COMMANDS = {"test-module", "fetch-incidents"}


def test_yml_validates_against_the_xsoar_integration_schema():
    schema = yaml.safe_load((ROOT / "tests" / "schemas" / "integration.yml").read_text())
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)
    Core(source_data=YML, schema_data=schema).validate(raise_exception=True)


def test_brand_and_context_prefix_match_the_contract():
    assert YML["commonfields"]["id"] == YML["name"] == CONTRACT["brand"]
    paths = {o["contextPath"] for c in YML_COMMANDS.values() for o in c.get("outputs") or []}
    assert all(p.split(".")[0] in (CONTRACT["context_prefix"], "Endpoint", "File", "IP", "Domain", "URL", "CVE",
                                   "DBotScore")
               for p in paths)


def contract_gaps(command: dict) -> list[str]:
    have = YML_COMMANDS.get(command["name"])
    if have is None:
        return ["missing command"]
    gaps = []
    have_args = {a["name"]: a for a in have.get("arguments") or []}
    for arg in command["arguments"]:
        got = have_args.get(arg["name"])
        if got is None:
            gaps.append(f"missing argument {arg['name']}")
        elif set(arg.get("predefined") or []) - set(got.get("predefined") or []):
            gaps.append(f"argument {arg['name']} lacks options")
        elif arg.get("required") and not got.get("required"):
            gaps.append(f"argument {arg['name']} should be required")
    outputs = {o["contextPath"] for o in have.get("outputs") or []}
    gaps += [f"missing output {p}" for p in command["outputs"] if p not in outputs]
    if command.get("deprecated") and not have.get("deprecated"):
        gaps.append("should be marked deprecated")
    return gaps


@pytest.mark.parametrize("command", [c for c in CONTRACT["commands"] if c["area"] in IMPLEMENTED_AREAS],
                         ids=lambda c: c["name"])
def test_contract_command_is_in_the_yml(command):
    assert contract_gaps(command) == []


def test_legacy_parameters_are_kept_hidden_or_visible_as_before():
    configured = {p["name"]: p for p in YML["configuration"]}
    for legacy in CONTRACT["legacy_configuration"]:
        assert legacy["name"] in configured, legacy["name"]
        if legacy.get("hidden"):
            assert configured[legacy["name"]].get("hidden"), legacy["name"]
    for name in CONTRACT["fetch_params"]:
        assert name in configured


def test_authentication_flow_parameter_offers_exactly_the_four_flows():
    flow = next(p for p in YML["configuration"] if p["name"] == "auth_flow")
    assert flow["options"] == list(mde.AUTH_FLOWS)
    endpoint = next(p for p in YML["configuration"] if p["name"] == "endpoint_type")
    assert endpoint["options"] == list(mde.ENDPOINT_TYPES)


def test_every_yml_command_has_a_function_and_every_function_a_yml_command():
    assert set(YML_COMMANDS) == set(mde.COMMANDS) - PLATFORM_COMMANDS


def test_every_command_maps_to_exactly_one_function_and_names_cannot_be_registered_twice():
    functions = [spec.func for spec in mde.COMMANDS.values()]
    assert len(functions) == len(set(functions)), "one function serves two command names"
    with pytest.raises(RuntimeError, match="registered twice"):
        mde.command("microsoft-atp-get-machines")(lambda client, args: None)


def test_module_docstring_lists_the_areas_in_file_order():
    source = Path(mde.__file__).read_text()
    headers = re.findall(r"^# (6\.\d+) ([A-Z][\w ]+)$", source, re.M)
    docstring = mde.__doc__ or ""
    listed = re.findall(r"(6\.\d+) ([A-Z][a-z]+(?: [a-z]+)*)", docstring)
    assert [number for number, _ in headers] == [number for number, _ in listed]
    assert [title for _, title in headers] == [title.strip() for _, title in listed]
    assert len(headers) == 11


def test_fetch_incidents_is_wired_when_the_yml_says_isfetch():
    assert YML["script"].get("isfetch") is ("fetch-incidents" in mde.COMMANDS)


def test_every_command_that_calls_the_api_declares_its_permissions():
    local_only = {"microsoft-atp-generate-login-url", "microsoft-atp-auth-reset",
                  "microsoft-atp-list-auth-permissions"}
    for name, spec in mde.COMMANDS.items():
        assert bool(spec.roles) != (name in local_only), name


def test_command_reference_is_generated_from_the_current_yml():
    from xsoar_local.docs import command_reference
    from xsoar_local.yml import load_integration

    generated = command_reference(load_integration(ROOT / "MicrosoftDefenderForEndpoint.yml"))
    assert (ROOT / "docs" / "commands.md").read_text() == generated, "docs/commands.md is stale: run `make docs`"


def test_commands_that_poll_are_marked_polling_for_the_platform():
    """XSOAR runs scheduled commands only for commands marked `polling: true`."""
    for name, command in YML_COMMANDS.items():
        takes_polling_arg = any(a["name"] == "polling" for a in command.get("arguments") or [])
        assert bool(command.get("polling")) == takes_polling_arg, name


def test_plugin_still_compiles_when_the_platform_prepends_code():
    """XSOAR tooling may insert lines before the script; a `from __future__` import would then be a SyntaxError."""
    source = (ROOT / "MicrosoftDefenderForEndpoint.py").read_text()
    compile("register_module_line('MicrosoftDefenderForEndpoint', 'start', __line__())\n" + source, "plugin", "exec")


def test_plugin_imports_only_what_xsoar_images_carry():
    import ast

    tree = ast.parse((ROOT / "MicrosoftDefenderForEndpoint.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    import sys

    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    assert third_party == {"demistomock", "requests", "msal", "cryptography"}


def test_the_unified_yml_for_upload_is_valid_and_embeds_the_script(tmp_path):
    from xsoar_local.package import build

    unified = yaml.safe_load(build(ROOT / "MicrosoftDefenderForEndpoint.yml", tmp_path).read_text())
    schema = yaml.safe_load((ROOT / "tests" / "schemas" / "integration.yml").read_text())
    Core(source_data=unified, schema_data=schema).validate(raise_exception=True)
    script = unified["script"]["script"]
    assert "def main(" in script and "import demistomock" not in script
    compile(script, "unified", "exec")


CONTRACT_COMMANDS_IN_YML = [c for c in CONTRACT["commands"] if c["name"] in YML_COMMANDS]


@pytest.mark.parametrize("command", CONTRACT_COMMANDS_IN_YML, ids=lambda c: c["name"])
def test_confirmation_and_policy_flags_are_the_originals(command):
    """XSOAR asks an analyst to confirm `execution: true` commands; policies group commands for approval rules."""
    have = YML_COMMANDS[command["name"]]
    assert bool(have.get("execution")) is bool(command.get("execution"))
    assert sorted(have.get("compliantpolicies") or []) == sorted(command.get("compliantpolicies") or [])


def test_incoming_mapper_and_parameter_sections_are_the_originals():
    integration = CONTRACT["integration"]
    assert YML["defaultmapperin"] == integration["defaultmapperin"]
    assert YML["sectionorder"] == integration["sectionorder"]
    unsectioned = [p["name"] for p in YML["configuration"] if p.get("section") not in YML["sectionorder"]]
    assert unsectioned == []


def _image_version(image: str) -> tuple[str, tuple[int, ...]]:
    name, _, tag = image.partition(":")
    return name, tuple(int(part) for part in tag.split("."))


def test_docker_image_is_at_least_as_new_as_the_originals():
    name, version = _image_version(YML["script"]["dockerimage"])
    floor_name, floor = _image_version(CONTRACT["integration"]["min_dockerimage"])
    assert name == floor_name and version >= floor


def test_deprecated_commands_name_replacements_that_exist_in_microsoft_graph_security():
    import re

    graph_security_commands = {"msg-search-alerts", "msg-get-alert-details", "msg-update-alert", "msg-advanced-hunting"}
    named = {m for c in YML_COMMANDS.values() for m in re.findall(r"\bmsg-[a-z-]*[a-z]", c.get("description", ""))}
    assert named and named <= graph_security_commands
    for name, command in YML_COMMANDS.items():
        if command.get("deprecated") and CONTRACT_AREAS.get(name) == "alerts":
            assert "Use " in command["description"] and " instead" in command["description"], name


CONTRACT_AREAS = {c["name"]: c["area"] for c in CONTRACT["commands"]}


def test_fetch_parameters_are_the_platforms_shape_and_the_old_first_fetch_name_stays_readable():
    """demisto-sdk: IN121 (isFetch/incidentType exactly as the platform defines them), IN126 (first_fetch)."""
    configured = {p["name"]: p for p in YML["configuration"]}
    ignored = {"section", "required", "advanced", "defaultvalue"}
    assert {k: v for k, v in configured["isFetch"].items() if k not in ignored} == {
        "display": "Fetch incidents", "name": "isFetch", "type": 8}
    assert {k: v for k, v in configured["incidentType"].items() if k not in ignored} == {
        "display": "Incident type", "name": "incidentType", "type": 13}
    assert configured["first_fetch"]["type"] == 0 and not configured["first_fetch"].get("hidden")
    legacy = configured["first_fetch_timestamp"]
    assert legacy.get("hidden") and "defaultvalue" not in legacy  # a new instance carries only first_fetch


def test_reputation_commands_describe_dbotscore_as_the_platform_requires():
    """demisto-sdk's IN101: reputation commands carry the platform's own DBotScore descriptions."""
    standard = {"DBotScore.Indicator": "The indicator that was tested.", "DBotScore.Type": "The indicator type.",
                "DBotScore.Vendor": "The vendor used to calculate the score.", "DBotScore.Score": "The actual score."}
    reputation = [YML_COMMANDS[name] for name in ("file", "ip", "url", "domain", "cve") if name in YML_COMMANDS]
    for command in reputation:
        described = {o["contextPath"]: o.get("description") for o in command.get("outputs") or []}
        assert {path: described.get(path) for path in standard} == standard, command["name"]

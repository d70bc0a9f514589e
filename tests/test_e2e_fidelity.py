"""End to end: what the original's playbooks rely on, through the `mde` CLI against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
YML = yaml.safe_load((Path(__file__).resolve().parent.parent / "MicrosoftDefenderForEndpoint.yml").read_text())
EVIDENCE_PREFIX = "MicrosoftATP.Alert.Evidence."


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def run_json(lab, command: str, *args: str) -> dict:
    result = lab.mde.run(lab.instances["client-credentials"], command, *args, options=("--json",))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_enrichment_playbook_call_reads_every_evidence_path(lab):
    """"MDE Malware - Incident Enrichment" calls `get-alert-by-id alert_ids=<id>`, without `evidence=true`."""
    listed = as_list(run_json(lab, "microsoft-atp-list-alerts", "limit=300")["MicrosoftATP.Alert"])
    one_per_title = list({alert["Title"]: alert["ID"] for alert in listed}.values())
    alerts = as_list(run_json(lab, "microsoft-atp-get-alert-by-id", f"alert_ids={','.join(one_per_title)}")
                     ["MicrosoftATP.Alert"])
    evidence = [item for alert in alerts for item in alert.get("Evidence") or []]
    assert all(alert.get("Evidence") for alert in alerts)  # every seeded alert has evidence
    command = next(c for c in YML["script"]["commands"] if c["name"] == "microsoft-atp-get-alert-by-id")
    declared = [o["contextPath"].removeprefix(EVIDENCE_PREFIX) for o in command["outputs"]
                if o["contextPath"].startswith(EVIDENCE_PREFIX)]
    assert [field for field in declared if all(item.get(field) is None for item in evidence)] == []


def test_api_call_metrics_reach_the_cli_only_with_verbose(lab):
    instance = lab.instances["client-credentials"]
    quiet = lab.mde.run(instance, "microsoft-atp-get-machines", "page_size=5")
    verbose = lab.mde.run(instance, "microsoft-atp-get-machines", "page_size=5", options=("--verbose",))
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "[metrics]" not in quiet.stdout + quiet.stderr
    assert "[metrics] API calls: Successful 1" in verbose.stderr


def test_endpoint_context_has_the_originals_status_and_os_version(lab):
    machine = as_list(run_json(lab, "microsoft-atp-get-machines", "page_size=50",
                               "health_status=Active")["MicrosoftATP.Machine"])[0]
    endpoint = as_list(run_json(lab, "endpoint", f"id={machine['ID']}")["Endpoint"])[0]
    assert endpoint["Status"] == "Online"
    assert endpoint["OSVersion"] == f"{machine.get('OSVersion')} {machine['OSProcessor']} bit"

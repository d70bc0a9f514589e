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

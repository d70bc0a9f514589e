"""End to end: indicators through the `mde` CLI against the emulator (create, list, update, delete, the older
commands, and a 2,400-indicator batch with a few invalid items)."""

from __future__ import annotations

import hashlib
import json

import pytest

pytestmark = pytest.mark.e2e
IMPORT_ROUTE = "POST /api/indicators/import"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(lab, command: str, *args: str, ok: bool = True):
    result = lab.mde.run(lab.instances["client-credentials"], command, *args, options=("--json",))
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def context(lab, command: str, *args: str) -> dict:
    return json.loads(run(lab, command, *args).stdout)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def requests_to(lab, route: str) -> int:
    return lab.emulator.counters()["requests"].get(route, 0)


def test_create_list_update_delete_a_file_hash(lab):
    value = sha256("e2e block")
    created = context(lab, "microsoft-atp-sc-indicator-create", f"indicator_value={value}",
                      "indicator_type=FileSha256", "action=Block", "severity=High", "indicator_title=e2e block",
                      "indicator_description=blocked from the e2e test", "rbac_group_names=Servers")
    indicator = as_list(created["MicrosoftATP.Indicators"])[0]
    assert indicator["indicatorValue"] == value and indicator["action"] == "Block"
    assert indicator["rbacGroupNames"] == ["Servers"] and indicator["expirationTime"]
    assert as_list(created["File"]) == [{"SHA256": value}]
    assert as_list(created["DBotScore"])[0]["Score"] == 3

    listed = context(lab, "microsoft-atp-sc-indicator-list", f"indicator_value={value}")
    assert [i["id"] for i in as_list(listed["MicrosoftATP.Indicators"])] == [indicator["id"]]

    text = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-sc-indicator-update",
                       f"indicator_value={value}", "indicator_type=FileSha256", "action=Audit",
                       "indicator_title=e2e audit", "indicator_description=now audit only")
    assert text.returncode == 0, text.stderr
    assert f"Indicator {indicator['id']} updated" in text.stdout
    got = context(lab, "microsoft-atp-sc-indicator-get-by-id", f"indicator_id={indicator['id']}")
    updated = as_list(got["MicrosoftATP.Indicators"])[0]
    assert (updated["action"], updated["generateAlert"], updated["title"]) == ("Audit", True, "e2e audit")

    deleted = run(lab, "microsoft-atp-sc-indicator-delete", f"indicator_id={indicator['id']}")
    assert deleted.returncode == 0
    gone = run(lab, "microsoft-atp-sc-indicator-get-by-id", f"indicator_id={indicator['id']}", ok=False)
    assert gone.returncode != 0 and "HTTP 404" in gone.stderr


def test_invalid_input_is_refused_by_the_plugin_before_microsoft(lab):
    before = requests_to(lab, "POST /api/indicators")
    refused = run(lab, "microsoft-atp-sc-indicator-create", "indicator_value=evil.example",
                  "indicator_type=DomainName", "action=BlockAndRemediate", "indicator_title=t",
                  "indicator_description=d", ok=False)
    assert refused.returncode != 0 and "action=BlockAndRemediate applies only to" in refused.stderr
    assert requests_to(lab, "POST /api/indicators") == before


def test_older_graph_commands_run_on_the_indicators_api(lab):
    created = context(lab, "microsoft-atp-indicator-create-network", "action=block", "description=e2e legacy",
                      "expiration_time=7 days", "threat_type=C2", "domain_name=legacy-e2e.example",
                      "network_ipv4=203.0.113.77")
    legacy = as_list(created["MicrosoftATP.Indicators"])
    assert {i.get("domainName") or i.get("networkIPv4") for i in legacy} == {"legacy-e2e.example", "203.0.113.77"}
    assert {i["action"] for i in legacy} == {"block"}
    domain_id = next(i["id"] for i in legacy if i.get("domainName"))
    updated = context(lab, "microsoft-atp-indicator-update", f"indicator_id={domain_id}", "severity=MediumLow",
                      "expiration_time=30 days", "description=changed")
    assert as_list(updated["MicrosoftATP.Indicators"])[0]["description"] == "changed"
    cidr = run(lab, "microsoft-atp-indicator-create-network", "action=block", "description=d",
               "expiration_time=7 days", "threat_type=C2", "network_cidr_block=10.0.0.0/8", ok=False)
    assert "network_cidr_block cannot be used any more" in cidr.stderr
    for indicator in legacy:
        assert run(lab, "microsoft-atp-indicator-delete", f"indicator_id={indicator['id']}").returncode == 0


def test_a_2400_indicator_batch_with_invalid_items(lab, tmp_path):
    valid = [{"indicatorValue": sha256(f"batch {i}"), "indicatorType": "FileSha256", "action": "Block",
              "title": "e2e batch", "description": "bulk", "expirationTime": "30 days"} for i in range(2_394)]
    invalid = [
        {**valid[0], "indicatorValue": "not-a-hash"},
        {**valid[0], "indicatorValue": "evil.example", "indicatorType": "DomainName",
         "action": "BlockAndRemediate"},
        {**valid[0], "indicatorValue": "10.0.0.0/8", "indicatorType": "IpAddress"},
        {**valid[0], "action": "Audit", "generateAlert": False, "indicatorValue": sha256("audit")},
        dict(valid[1]),  # a repeat
        {**valid[2], "indicatorValue": valid[2]["indicatorValue"].upper()},  # the same hash in capitals
    ]
    batch = valid[:1000] + invalid + valid[1000:]
    assert len(batch) == 2_400
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(batch))
    imports_before = requests_to(lab, IMPORT_ROUTE)

    result = context(lab, "microsoft-atp-indicator-batch-update", f"indicator_batch={path}")
    outcomes = as_list(result["MicrosoftATP.Indicators"])
    assert len(outcomes) == 2_400
    failed = [o for o in outcomes if o["IsFailed"]]
    assert sorted(o["Value"] for o in failed) == sorted(i["indicatorValue"] for i in invalid)
    assert all(o["FailureReason"] for o in failed)
    assert sum(o["Outcome"] == "Created" for o in outcomes) == 2_394
    assert requests_to(lab, IMPORT_ROUTE) - imports_before == 5  # 2,394 valid items, 500 per call

    listed = context(lab, "microsoft-atp-sc-indicator-list", "indicator_title=e2e batch", "limit=0")
    values = [i["indicatorValue"] for i in as_list(listed["MicrosoftATP.Indicators"])]
    assert sorted(values) == sorted(i["indicatorValue"] for i in valid)  # every valid one exactly once

    again = context(lab, "microsoft-atp-indicator-batch-update", f"indicator_batch={path}")
    assert sum(o["Outcome"] == "Updated" for o in as_list(again["MicrosoftATP.Indicators"])) == 2_394

    ids = [o["ID"] for o in outcomes if not o["IsFailed"]]
    batch_deletes_before = requests_to(lab, "POST /api/indicators/BatchDelete")
    assert run(lab, "microsoft-atp-sc-indicator-delete", f"indicator_id={','.join(ids)}").returncode == 0
    assert requests_to(lab, "POST /api/indicators/BatchDelete") - batch_deletes_before == 5
    empty = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-sc-indicator-list",
                        "indicator_title=e2e batch")
    assert "sees only the indicators it created" in empty.stdout

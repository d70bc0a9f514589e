"""End to end: a response action whose request ends ambiguously is found and reported, never sent twice."""

from __future__ import annotations

import json

import pytest
from e2e import api_requests

pytestmark = pytest.mark.e2e


def run_json(lab, command: str, *args: str) -> dict:
    result = lab.mde.run(lab.instances["client-credentials"], command, *args, options=("--json",))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def spare_machines(lab) -> list[str]:
    """Machines no other end-to-end test acts on (they use the first Windows machines)."""
    machines = as_list(run_json(lab, "microsoft-atp-get-machines", "page_size=40", "page_num=3",
                                "os_platform=Windows10")["MicrosoftATP.Machine"])
    return [machine["ID"] for machine in machines[-3:]]


def actions_of(lab, machine_id: str, action_type: str) -> list[dict]:
    ctx = run_json(lab, "microsoft-atp-list-machine-actions-details", f"machine_id={machine_id}",
                   f"type={action_type}")
    return as_list(ctx.get("MicrosoftATP.MachineAction", []))


@pytest.mark.parametrize(("fault", "index"), [
    ({"drop_after_write": 1}, 0),
    ({"garbled_success": {"count": 1, "kind": "html"}}, 1),
    ({"garbled_success": {"count": 1, "kind": "malformed"}}, 2),
])
def test_an_action_created_by_an_ambiguous_request_is_reported_once(lab, spare_machines, fault, index):
    machine_id = spare_machines[index]
    lab.emulator.reset_counters()
    lab.emulator.set_faults(**fault)
    try:
        ctx = run_json(lab, "microsoft-atp-restrict-app-execution", f"machine_id={machine_id}",
                       "comment=e2e ambiguous", "polling=false")
    finally:
        lab.emulator.set_faults(drop_after_write=0, garbled_success=None)

    reported = as_list(ctx["MicrosoftATP.MachineAction"])
    assert [action["MachineID"] for action in reported] == [machine_id] and reported[0].get("ID")
    assert api_requests(lab.emulator, "POST /api/machines/{id}/restrictCodeExecution") == 1
    created = actions_of(lab, machine_id, "RestrictCodeExecution")
    assert [action["ID"] for action in created] == [reported[0]["ID"]]


def test_an_action_that_fails_on_some_machines_exits_3_and_reports_each_machine(lab, spare_machines):
    machine_id = spare_machines[0]
    result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-run-antivirus-scan",
                         f"machine_id={machine_id},not-a-machine", "comment=e2e partial", "scan_type=Quick",
                         "polling=false", options=("--json",))

    assert result.returncode == 3, result.stderr
    assert "warning: RunAntiVirusScan failed for 1 of 2 machines" in result.stderr
    outcomes = {row["MachineID"]: row for row in as_list(json.loads(result.stdout)["MicrosoftATP.MachineAction"])}
    assert outcomes[machine_id].get("ID") and outcomes["not-a-machine"]["Status"] == "Failed"
    assert "machine_id must be a machine ID" in outcomes["not-a-machine"]["Error"]

"""End to end: vulnerability management through the `mde` CLI against the emulator, every command."""

from __future__ import annotations

import json

import pytest
from e2e import api_requests

pytestmark = pytest.mark.e2e


def run_json(lab, command: str, *args: str) -> dict:
    result = lab.mde.run(lab.instances["client-credentials"], command, *args, options=("--json",))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def listed(ctx: dict, key: str) -> list[dict]:
    value = ctx.get(key, [])
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def chrome(lab) -> dict:
    found = listed(run_json(lab, "microsoft-atp-list-software", "id=google-_-chrome"), "MicrosoftATP.Software")
    assert [s["id"] for s in found] == ["google-_-chrome"]
    return found[0]


@pytest.fixture(scope="module")
def exposed(lab) -> tuple[str, list[dict]]:
    """A CVE of an installed product with exposed machines, and those machines, found the way an analyst would."""
    cves = listed(run_json(lab, "microsoft-atp-list-vulnerabilities-by-software", "id=microsoft-_-windows_11"),
                  "MicrosoftATP.SoftwareCVE")
    cve = max(cves, key=lambda v: v["exposedMachines"])
    assert cve["exposedMachines"] >= 2
    machines = listed(run_json(lab, "microsoft-atp-list-machines-by-vulnerability", f"cve_id={cve['id']}"),
                      "MicrosoftATP.CveMachine")
    assert len(machines) == cve["exposedMachines"]
    assert all(m["CVE"] == [cve["id"]] for m in machines)
    return cve["id"], machines


def test_software_inventory_views_agree(lab, chrome):
    versions = listed(run_json(lab, "microsoft-atp-list-software-version-distribution", "id=google-_-chrome"),
                      "MicrosoftATP.SoftwareVersion")
    assert sum(v["installations"] for v in versions) == chrome["installedMachines"]
    machines = listed(run_json(lab, "microsoft-atp-list-machines-by-software", "id=google-_-chrome"),
                      "MicrosoftATP.SoftwareMachine")
    assert len(machines) == chrome["installedMachines"]
    ctx = run_json(lab, "microsoft-atp-list-vulnerabilities-by-software", "id=google-_-chrome")
    cves = listed(ctx, "MicrosoftATP.SoftwareCVE")
    assert len(cves) == chrome["weaknesses"] and {c["ID"] for c in listed(ctx, "CVE")} == {c["id"] for c in cves}
    kbs = listed(run_json(lab, "microsoft-atp-list-missing-kb-by-software", "id=microsoft-_-windows_11"),
                 "MicrosoftATP.SoftwareKB")
    assert kbs and all(k["url"].endswith(k["id"]) and k["machineMissedOn"] >= 1 for k in kbs)


def test_software_filters_and_unknown_ids(lab):
    microsoft = listed(run_json(lab, "microsoft-atp-list-software", "vendor=microsoft", "limit=3"),
                       "MicrosoftATP.Software")
    assert len(microsoft) == 3 and {s["vendor"] for s in microsoft} == {"microsoft"}
    result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-list-machines-by-software",
                         "id=contoso-_-nothing")
    assert result.returncode == 1 and "was not found" in result.stderr
    bad = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-list-machines-by-software",
                      "id=../../machines")
    assert bad.returncode == 1 and "vendor-_-product" in bad.stderr


def test_vulnerabilities_walk_past_the_8000_page_limit(lab):
    lab.emulator.reset_counters()
    ctx = run_json(lab, "microsoft-atp-list-vulnerabilities", "all_results=true")
    assert len(listed(ctx, "MicrosoftATP.Vulnerability")) == 8500
    assert api_requests(lab.emulator, "GET /api/Vulnerabilities") == 2
    assert lab.emulator.counters()["responses"].get("400", 0) == 0


def test_machines_with_a_cve_and_cves_on_those_machines_agree(lab, exposed):
    cve, machines = exposed
    first = machines[0]["ID"]
    on_machine = run_json(lab, "microsoft-atp-get-machine-vulnerabilities", f"machine_id={first}")
    assert cve in {v["ID"] for v in listed(on_machine, "MicrosoftATP.PublicVulnerability")}
    assert {c["ID"] for c in listed(on_machine, "CVE")} == {
        v["ID"] for v in listed(on_machine, "MicrosoftATP.PublicVulnerability")}
    rows = listed(run_json(lab, "microsoft-atp-list-vulnerabilities-by-machine", f"cve_id={cve}", "all_results=true"),
                  "MicrosoftATP.MachineCVE")
    assert {r["machineId"] for r in rows} == {m["ID"] for m in machines}


def test_vulnerabilities_by_machine_reports_each_machine(lab, exposed):
    cve, machines = exposed
    unknown = "0" * 40
    result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-list-vulnerabilities-by-machine",
                         f"machine_id={machines[0]['ID']},{unknown}", "limit=500")
    assert result.returncode == 0, result.stderr
    assert "none found" in result.stdout and unknown in result.stdout
    ctx = run_json(lab, "microsoft-atp-list-vulnerabilities-by-machine", f"machine_id={machines[0]['ID']},{unknown}",
                   "limit=500")
    rows = listed(ctx, "MicrosoftATP.MachineCVE")
    assert rows and {r["machineId"] for r in rows} == {machines[0]["ID"]} and cve in {r["cveId"] for r in rows}


def test_machine_vulnerability_quota_is_waited_out(lab, exposed):
    _, machines = exposed
    ids = ",".join(m["ID"] for m in machines[:2])
    lab.emulator.reset_counters()
    lab.emulator.set_faults(rate_limit_per_minute=1, rate_limit_families=["machine-vulnerabilities"],
                            rate_limit_window_seconds=1)
    try:
        ctx = run_json(lab, "microsoft-atp-list-vulnerabilities-by-machine", f"machine_id={ids}")
    finally:
        lab.emulator.set_faults(rate_limit_per_minute=None, rate_limit_families=None, rate_limit_window_seconds=60)
    assert lab.emulator.counters()["responses"].get("429", 0) >= 1
    assert {r["machineId"] for r in listed(ctx, "MicrosoftATP.MachineCVE")} == {m["ID"] for m in machines[:2]}


def test_machine_software_and_missing_kbs(lab, exposed):
    machine = exposed[1][0]["ID"]
    software = listed(run_json(lab, "microsoft-atp-get-machine-software", f"machine_id={machine}"),
                      "MicrosoftATP.Software")
    assert software and all("-_-" in s["ID"] for s in software)
    kbs = run_json(lab, "microsoft-atp-get-machine-missing-kbs", f"machine_id={machine}")
    assert all(k["MachineMissedOn"] == 1 for k in listed(kbs, "MicrosoftATP.PublicProductFix"))


def test_what_to_patch_first(lab):
    ctx = run_json(lab, "microsoft-atp-list-security-recommendations", "severity_score=7", "remediation_type=Update",
                   "include_machines=true", "include_vulnerabilities=true", "limit=3")
    recommendations = listed(ctx, "MicrosoftATP.Recommendation")
    assert recommendations and all(r["SeverityScore"] >= 7 for r in recommendations)
    assert all(len(r["Machines"]) == r["ExposedMachinesCount"] for r in recommendations)
    assert all(len(r["Vulnerabilities"]) == r["Weaknesses"] for r in recommendations)
    assert listed(ctx, "CVE")
    score = run_json(lab, "microsoft-atp-get-exposure-score", "by_machine_group=true")
    assert 0 <= listed(score, "MicrosoftATP.ExposureScore")[0]["Score"] <= 100
    assert {g["RBACGroupName"] for g in listed(score, "MicrosoftATP.MachineGroupExposureScore")} >= {"Servers"}
    tasks = listed(run_json(lab, "microsoft-atp-list-remediation-tasks", "status=Active"), "MicrosoftATP.RemediationTask")
    assert tasks and {t["Status"] for t in tasks} == {"Active"}
    one = listed(run_json(lab, "microsoft-atp-list-remediation-tasks", f"id={tasks[0]['ID']}"),
                 "MicrosoftATP.RemediationTask")
    assert [t["ID"] for t in one] == [tasks[0]["ID"]]

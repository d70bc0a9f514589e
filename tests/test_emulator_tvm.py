"""The emulator's vulnerability-management endpoints: software, vulnerabilities, machine views, recommendations,
exposure score and remediation tasks, their OData options, page limits, quota and consistency."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from test_emulator import Api as EmulatorApi

from mde_emulator.data import Store
from mde_emulator.server import EmulatorServer, Options
from mde_emulator.tvm_data import CATALOGUE_SIZE, TvmData

DEFAULT_FAULTS = {"rate_limit_per_minute": None, "rate_limit_families": None, "rate_limit_window_seconds": 60}


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(Options(seed=5, machines=300, alerts=20)) as srv:
        srv.emulator.clock.freeze(True)  # emulator time moves only when a test advances it
        yield srv


class Api(EmulatorApi):
    """The emulator tests' API client, with query parameters and the `value` of collections."""

    def get(self, path, **params) -> requests.Response:
        return super().get(path, params=params or None)

    def values(self, path, **params) -> list[dict]:
        r = self.get(path, **params)
        assert r.status_code == 200, r.text
        return r.json()["value"]


@pytest.fixture
def api(server):
    return Api(server.info)


@pytest.fixture
def tvm(server):
    from mde_emulator.tvm_data import tvm_of
    return tvm_of(server.emulator.store)


# -- software ----------------------------------------------------------------------------------------------------
def test_software_list_filter_and_entity(api):
    software = api.values("/api/Software")
    assert {"microsoft-_-windows_11", "google-_-chrome"} <= {s["id"] for s in software}
    assert set(software[0]) >= {"id", "name", "vendor", "weaknesses", "publicExploit", "activeAlert",
                                "exposedMachines", "impactScore"}
    google = api.values("/api/Software", **{"$filter": "vendor eq 'GOOGLE'"})
    assert [s["id"] for s in google] == ["google-_-chrome"]
    named = api.values("/api/Software", **{"$filter": "name in ('chrome','firefox')"})
    assert {s["id"] for s in named} == {"google-_-chrome", "mozilla-_-firefox"}
    one = api.get("/api/software/google-_-chrome").json()  # paths are case-insensitive, like the service
    assert one["id"] == "google-_-chrome" and one["@odata.context"].endswith("#Software/$entity")
    missing = api.get("/api/Software/contoso-_-nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ResourceNotFound"
    bad = api.get("/api/Software", **{"$filter": "weaknesses gt 3"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "ODataError"


def test_software_distributions_and_machines_agree(api):
    software = api.get("/api/Software/microsoft-_-edge_chromium-based").json()
    distributions = api.values("/api/Software/microsoft-_-edge_chromium-based/distributions")
    assert sum(d["installations"] for d in distributions) == software["installedMachines"]
    assert distributions[-1]["vulnerabilities"] == 0 and distributions[0]["vulnerabilities"] > 0
    machines = api.values("/api/Software/microsoft-_-edge_chromium-based/machineReferences")
    assert len(machines) == software["installedMachines"]
    assert set(machines[0]) == {"id", "computerDnsName", "osPlatform", "rbacGroupName", "rbacGroupId"}
    cves = api.values("/api/Software/microsoft-_-edge_chromium-based/vulnerabilities")
    assert len(cves) == software["weaknesses"] and all(c["id"].startswith("CVE-") for c in cves)


def test_software_missing_kbs_only_for_patchable_products(api):
    kbs = api.values("/api/Software/microsoft-_-windows_11/getmissingkbs")
    assert kbs and set(kbs[0]) == {"id", "name", "osBuild", "productsNames", "url", "machineMissedOn",
                                   "cveAddressed"}
    assert kbs[0]["productsNames"] == ["windows_11"] and kbs[0]["url"].endswith(kbs[0]["id"])
    assert api.values("/api/Software/google-_-chrome/getmissingkbs") == []


# -- vulnerabilities ---------------------------------------------------------------------------------------------
def test_vulnerabilities_page_at_8000_with_next_link(api):
    first = api.get("/api/Vulnerabilities").json()
    assert len(first["value"]) == 8000 and "$skip=8000" in first["@odata.nextLink"]
    rest = requests.get(first["@odata.nextLink"], headers=api.headers, verify=api.info["ca_bundle"]).json()
    assert len(rest["value"]) == CATALOGUE_SIZE - 8000 and "@odata.nextLink" not in rest
    assert not {v["id"] for v in first["value"]} & {v["id"] for v in rest["value"]}
    too_many = api.get("/api/vulnerabilities", **{"$top": "8001"})
    assert too_many.status_code == 400 and "8000" in too_many.json()["error"]["message"]
    tail = api.values("/api/vulnerabilities", **{"$top": "8000", "$skip": "8000"})
    assert [v["id"] for v in tail] == [v["id"] for v in rest["value"]]


def test_vulnerability_filters(api):
    critical = api.values("/api/vulnerabilities", **{"$filter": "cvssV3 ge 9.0 and severity eq 'Critical'",
                                                     "$top": "8000"})
    assert critical and all(v["cvssV3"] >= 9.0 for v in critical)
    recent = api.values("/api/vulnerabilities", **{"$filter": "publishedOn ge 2025-01-01T00:00:00Z", "$top": "8000"})
    assert recent and all(v["publishedOn"] >= "2025-01-01" for v in recent)
    sample = critical[0]
    by_name = api.values("/api/vulnerabilities", **{"$filter": f"contains(description,'{sample['description'][:12]}')"
                                                               f" and name eq '{sample['name']}'"})
    assert [v["id"] for v in by_name] == [sample["id"]]
    quote = api.get("/api/vulnerabilities", **{"$filter": "name eq 'O''Brien'"})
    assert quote.status_code == 200 and quote.json()["value"] == []


def test_machines_with_a_cve_and_cves_on_a_machine_agree(api, tvm):
    cve = next(v for v in tvm.vulnerabilities if v["exposedMachines"] >= 2)
    single = api.get(f"/api/Vulnerabilities/{cve['id']}").json()
    assert single["id"] == cve["id"] and single["exposedMachines"] == cve["exposedMachines"]
    refs = api.values(f"/api/vulnerabilities/{cve['id']}/machineReferences")
    assert len(refs) == cve["exposedMachines"]
    rows = api.values("/api/vulnerabilities/machinesVulnerabilities", **{"$filter": f"cveId eq '{cve['id']}'"})
    assert {r["machineId"] for r in rows} == {m["id"] for m in refs}
    for machine in refs[:3]:
        on_machine = api.values(f"/api/machines/{machine['id']}/vulnerabilities")
        assert cve["id"] in {v["id"] for v in on_machine}
        assert all(v["firstDetected"] >= v["publishedOn"][:10] for v in on_machine)
        rows = api.values("/api/vulnerabilities/machinesVulnerabilities",
                          **{"$filter": f"machineId eq '{machine['id']}'"})
        assert {r["cveId"] for r in rows} == {v["id"] for v in on_machine}
    assert api.get("/api/vulnerabilities/CVE-1999-0001").status_code == 404


def test_machine_vulnerability_rows_page_at_10000(server, api, tvm):
    total = len(tvm.machine_vulns)
    page = api.get("/api/vulnerabilities/machinesVulnerabilities", **{"$top": "10000"}).json()
    assert len(page["value"]) == min(total, 10000) and "@odata.nextLink" not in page
    assert api.get("/api/vulnerabilities/machinesVulnerabilities", **{"$top": "10001"}).status_code == 400
    row = page["value"][0]
    assert row["id"].startswith(f"{row['machineId']}-_-{row['cveId']}-_-{row['productVendor']}-_-")
    high = api.values("/api/vulnerabilities/machinesVulnerabilities",
                      **{"$filter": "severity eq 'High' and productVendor eq 'microsoft'", "$top": "10000"})
    assert high and all(r["severity"] == "High" and r["productVendor"] == "microsoft" for r in high)


# -- one machine ---------------------------------------------------------------------------------------------------
def test_machine_software_and_missing_kbs_match_its_rows(api, tvm):
    machine = next(m for m in tvm.machines if any(r.kb for r in tvm.vulns_by_machine[m["id"]]))
    software = api.values(f"/api/machines/{machine['id']}/software")
    assert {s["id"] for s in software} == {p.id for p, _ in tvm.installs[machine["id"]]}
    kbs = api.values(f"/api/machines/{machine['computerDnsName']}/getmissingkbs")  # by name too
    rows = api.values("/api/vulnerabilities/machinesVulnerabilities",
                      **{"$filter": f"machineId eq '{machine['id']}' and fixingKbId ne null"})
    assert {k["id"] for k in kbs} == {r["fixingKbId"] for r in rows}
    assert all(k["machineMissedOn"] == 1 for k in kbs)
    assert api.get("/api/machines/0000000000000000000000000000000000000000/software").status_code == 404


# -- recommendations, score, remediation -------------------------------------------------------------------------
def test_recommendations_filters_and_coverage(api):
    everything = api.values("/api/recommendations")
    assert {r["remediationType"] for r in everything} >= {"Update", "ConfigurationChange"}
    updates = api.values("/api/recommendations", **{"$filter": "remediationType eq 'Update' and vendor eq 'google'"})
    assert [r["id"] for r in updates] == ["va-_-google-_-chrome"]
    severe = api.values("/api/recommendations", **{"$filter": "severityScore ge 9"})
    assert severe and all(r["severityScore"] >= 9 for r in severe)
    assert {r["status"] for r in api.values("/api/recommendations", **{"$filter": "status eq 'Exception'"})} == {
        "Exception"}
    rec = api.get("/api/recommendations/va-_-google-_-chrome").json()
    machines = api.values("/api/recommendations/va-_-google-_-chrome/machineReferences")
    cves = api.values("/api/recommendations/va-_-google-_-chrome/vulnerabilities")
    assert len(machines) == rec["exposedMachinesCount"] and len(cves) == rec["weaknesses"]
    assert [s["id"] for s in api.values("/api/recommendations/va-_-google-_-chrome/software")] == ["google-_-chrome"]
    on_machine = api.values(f"/api/machines/{machines[0]['id']}/recommendations")
    assert "va-_-google-_-chrome" in {r["id"] for r in on_machine}
    assert api.get("/api/recommendations/va-_-nobody-_-nothing").status_code == 404


def test_exposure_scores_on_the_emulator_clock(server, api):
    tenant = api.get("/api/exposureScore").json()
    assert 0 <= tenant["score"] <= 100 and tenant["time"].endswith("Z")
    groups = api.values("/api/exposureScore/ByMachineGroups")
    assert {g["rbacGroupName"] for g in groups} >= {"Servers", "Workstations"}
    assert min(g["score"] for g in groups) <= tenant["score"] <= max(g["score"] for g in groups)
    assert 0 <= api.get("/api/configurationScore").json()["score"] <= 1000
    requests.post(f"{server.info['admin_url']}/clock", json={"advance": 400 * 86400}, verify=server.info["ca_bundle"],
                  timeout=10)
    later = Api(server.info).get("/api/exposureScore").json()  # the old token expired on the new clock
    assert later["time"][:4] > tenant["time"][:4] and later["score"] == tenant["score"]


def test_remediation_tasks(api):
    tasks = api.values("/api/remediationTasks")
    assert tasks and {t["status"] for t in tasks} == {"Active", "Completed"}
    active = api.values("/api/remediationTasks", **{"$filter": "status eq 'Active'"})
    assert active and all(t["status"] == "Active" for t in active)
    newest = max(t["createdOn"] for t in tasks)
    recent = api.values("/api/remediationTasks", **{"$filter": f"createdOn ge {newest}"})
    assert [t["createdOn"] for t in recent] == [newest]
    task = api.get(f"/api/remediationTasks/{tasks[0]['id']}").json()
    machines = api.values(f"/api/remediationTasks/{tasks[0]['id']}/machineReferences")
    assert task["targetDevices"] == len(machines)
    assert api.get("/api/remediationTasks/00000000-0000-0000-0000-000000000000").status_code == 404


# -- permissions, quota, determinism -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/Software", "/api/vulnerabilities", "/api/recommendations",
                                  "/api/exposureScore", "/api/remediationTasks"])
def test_each_area_needs_its_permission(server, path):
    r = Api(server.info, "limited").get(path)
    assert r.status_code == 403 and r.json()["error"]["code"] == "Forbidden"


def test_machine_vulnerability_quota_switch(server, api, tvm):
    admin = f"{server.info['admin_url']}/faults"
    machine = tvm.machines[0]["id"]
    clock = f"{server.info['admin_url']}/clock"
    requests.post(admin, json={"rate_limit_per_minute": 50, "rate_limit_families": ["machine-vulnerabilities"]},
                  verify=server.info["ca_bundle"], timeout=10)
    requests.post(clock, json={"frozen": True}, verify=server.info["ca_bundle"], timeout=10)  # one quota window
    try:
        statuses = [api.get(f"/api/machines/{machine}/vulnerabilities").status_code for _ in range(50)]
        assert statuses == [200] * 50
        over = api.get("/api/vulnerabilities/machinesVulnerabilities", **{"$top": "1"})
        assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
        assert "50 per 00:01:00" in over.json()["error"]["message"]
        assert api.get("/api/Software", **{"$top": "1"}).status_code == 200  # other families are unaffected
    finally:
        requests.post(clock, json={"frozen": False}, verify=server.info["ca_bundle"], timeout=10)
        requests.post(admin, json=DEFAULT_FAULTS, verify=server.info["ca_bundle"], timeout=10)


def test_seeded_the_same_way_every_time():
    def build():
        store = Store(seed=9, machines=40, alerts=0, tenant_id="t", now=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
        return TvmData(list(store.machines), store.seed, store.now)
    a, b = build(), build()
    assert [v["id"] for v in a.vulnerabilities] == [v["id"] for v in b.vulnerabilities]
    assert [r.get("id") for r in a.machine_vulns] == [r.get("id") for r in b.machine_vulns]
    assert a.software == b.software

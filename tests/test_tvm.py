"""Vulnerability management: software, vulnerabilities, missing KBs, recommendations, exposure score and remediation
tasks, every command at the HTTP boundary, driven through main()."""

from __future__ import annotations

import datetime as dt
import tracemalloc
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from conftest import API, make_jwt, mock_entra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import MicrosoftDefenderForEndpoint as mde
from mde_emulator import odata as emulator_odata

MID = "4899036531e374137f63289c3267bad772c13fef"
MID2 = "9f4bc0e1d2a3b4c5d6e7f8091a2b3c4d5e6f7a8b"
MID3 = "0123456789abcdef0123456789abcdef01234567"
CVE = "CVE-2024-21413"
CVE2 = "CVE-2023-36884"
TASK_ID = "03942ef5-ae0b-4e6e-b555-d6a97013844a"
SOFTWARE_KEY = "MicrosoftATP.Software(val.id && val.id == obj.id)"
MACHINE_SOFTWARE_KEY = "MicrosoftATP.Software(val.ID && val.ID == obj.ID)"
CVE_KEY = "CVE(val.ID && val.ID == obj.ID)"


@pytest.fixture(autouse=True)
def token(requests_mock):
    return mock_entra(requests_mock)


def query(request) -> dict[str, list[str]]:
    return parse_qs(urlparse(request.url).query)


def api_calls(requests_mock) -> list:
    return [r for r in requests_mock.request_history if "/api/" in r.url]


def software(software_id: str = "microsoft-_-edge", **overrides) -> dict:
    vendor, name = software_id.split("-_-")
    return {"id": software_id, "name": name, "vendor": vendor, "weaknesses": 467, "publicExploit": True,
            "activeAlert": False, "exposedMachines": 172, "installedMachines": 300, "impactScore": 2.39947438,
            "isNormalized": True, "category": "Application", "distributions": [{"version": "1.0"}], **overrides}


def vulnerability(cve: str = CVE, **overrides) -> dict:
    return {"id": cve, "name": cve, "description": "Remote code execution in the mail client.",
            "severity": "Critical", "cvssV3": 9.8, "cvssVector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "exposedMachines": 4, "publishedOn": "2024-02-13T00:00:00Z", "updatedOn": "2024-03-01T16:20:00Z",
            "firstDetected": "2024-02-20T08:00:00Z", "publicExploit": True, "exploitVerified": True,
            "exploitInKit": False, "exploitTypes": ["Remote code execution"],
            "exploitUris": ["https://exploits.example/1"], "cveSupportability": "Supported", "tags": ["ZeroDay"],
            "epss": 0.93, **overrides}


def cve_context(cve: str = CVE) -> dict:
    return {"ID": cve, "CVSS": 9.8, "Description": "Remote code execution in the mail client.",
            "Published": "2024-02-13T00:00:00Z", "Modified": "2024-03-01T16:20:00Z"}


def machine_reference(machine_id: str = MID, **overrides) -> dict:
    return {"id": machine_id, "computerDnsName": "desktop-1.contoso.com", "osPlatform": "Windows11",
            "rbacGroupName": "Workstations", "rbacGroupId": 4311, **overrides}


def machine_vuln(machine_id: str = MID, cve: str = CVE, n: int = 0) -> dict:
    return {"id": f"{machine_id}-_-{cve}-_-microsoft-_-outlook-_-16.0.{n}-_-", "cveId": cve, "machineId": machine_id,
            "fixingKbId": None, "productName": "outlook", "productVendor": "microsoft", "productVersion": f"16.0.{n}",
            "severity": "Critical"}


def kb(kb_id: str = "4540673") -> dict:
    return {"id": kb_id, "name": "March 2020 Security Updates", "osBuild": 19045, "productsNames": ["edge"],
            "url": f"https://catalog.update.microsoft.com/v7/site/Search.aspx?q=KB{kb_id}", "machineMissedOn": 240,
            "cveAddressed": 14}


def recommendation(rec_id: str = "va-_-microsoft-_-edge", **overrides) -> dict:
    return {"id": rec_id, "productName": "edge", "recommendationName": "Update Microsoft Edge", "weaknesses": 12,
            "vendor": "microsoft", "recommendedVersion": "130.0", "recommendedProgram": None,
            "recommendedVendor": None, "recommendationCategory": "Application", "subCategory": "",
            "severityScore": 9.1, "publicExploit": True, "activeAlert": False, "associatedThreats": ["t-1"],
            "remediationType": "Update", "status": "Active", "configScoreImpact": 0, "exposureImpact": 7.67,
            "totalMachineCount": 37, "exposedMachinesCount": 7, "nonProductivityImpactedAssets": 0,
            "relatedComponent": "Microsoft Edge", **overrides}


def task(task_id: str = TASK_ID, **overrides) -> dict:
    return {"id": task_id, "title": "Update Microsoft Silverlight", "createdOn": "2024-02-10T13:20:36.4718166Z",
            "requesterId": "65548a1d-ef00-4a7a-8d19-1b967b5c36f4", "requesterEmail": "user1@contoso.com",
            "status": "Active", "statusLastModifiedOn": "2024-02-10T13:20:36.4719698Z",
            "description": "Update Silverlight.", "relatedComponent": "Microsoft Silverlight", "targetDevices": 18,
            "rbacGroupNames": ["Servers"], "fixedDevices": 2, "requesterNotes": "patch it", "dueOn": "2024-02-11T00:00:00Z",
            "category": "Software", "productivityImpactRemediationType": None, "priority": "Medium",
            "completionMethod": None, "completerId": None, "completerEmail": None, "scid": None, "type": "Update",
            "productId": "microsoft-_-silverlight", "vendorId": "microsoft", "nameId": "silverlight",
            "recommendedVersion": None, "recommendedVendor": None, "recommendedProgram": None, **overrides}


# ---- software ---------------------------------------------------------------------------------------------------
def test_list_software_offset_and_all_results(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/Software", json={"value": []})
    xsoar.run("microsoft-atp-list-software", args={"limit": "7", "offset": "14"})
    assert query(route.last_request) == {"$top": ["7"], "$skip": ["14"]}
    xsoar.run("microsoft-atp-list-software", args={"all_results": "true", "limit": "7"})
    assert query(route.last_request) == {"$top": ["10000"], "$skip": ["0"]}


def test_list_software_defaults_to_50_and_keeps_microsofts_names(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/Software", json={"value": [software()]})

    run = xsoar.run("microsoft-atp-list-software")

    assert query(route.last_request) == {"$top": ["50"], "$skip": ["0"]}
    assert run.context == {SOFTWARE_KEY: [software()]}
    assert "|id|name|vendor|weaknesses|" in run.entry["HumanReadable"]


def test_list_software_filters_and_pages(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/Software", json={"value": []})

    xsoar.run("microsoft-atp-list-software", args={"id": "microsoft-_-.net_framework,Google-_-Chrome", "name": "edge",
                                                   "vendor": "o'reilly,microsoft", "limit": "10", "page": "3"})

    assert query(route.last_request) == {
        "$filter": ["id in ('microsoft-_-.net_framework', 'google-_-chrome') and name eq 'edge' and "
                    "vendor in ('o''reilly', 'microsoft')"], "$top": ["10"], "$skip": ["20"]}


@pytest.mark.parametrize("bad", ["edge", "microsoft-_-", "../x-_-y", "a-_-b/c", "a-_-b?x=1", "a-_-b c", "a-_-b%2F",
                                 "a'-_-b"])
def test_software_ids_are_validated_before_any_call(xsoar, requests_mock, bad):
    run = xsoar.run("microsoft-atp-list-software-version-distribution", args={"id": bad})
    assert "id must be a software ID in the form vendor-_-product" in run.error
    assert api_calls(requests_mock) == []


def test_software_version_distribution(xsoar, requests_mock):
    versions = [{"version": "130.0", "installations": 20, "vulnerabilities": 0},
                {"version": "124.0", "installations": 5, "vulnerabilities": 7}]
    route = requests_mock.get(f"{API}/Software/microsoft-_-edge/distributions", json={"value": versions})

    run = xsoar.run("microsoft-atp-list-software-version-distribution", args={"id": "Microsoft-_-Edge"})

    assert route.called
    key = "MicrosoftATP.SoftwareVersion(val.softwareId && val.softwareId == obj.softwareId && val.version == obj.version)"
    assert run.context == {key: [{**v, "softwareId": "microsoft-_-edge"} for v in versions]}


def test_machines_by_software(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/Software/microsoft-_-edge/machineReferences",
                              json={"value": [machine_reference(), machine_reference(MID2)]})

    run = xsoar.run("microsoft-atp-list-machines-by-software", args={"id": "microsoft-_-edge"})

    assert query(route.last_request) == {"$top": ["10000"], "$skip": ["0"]}
    assert run.context == {"MicrosoftATP.SoftwareMachine(val.id && val.id == obj.id)": [
        machine_reference(), machine_reference(MID2)]}


def test_vulnerabilities_by_software_with_cve_context(xsoar, requests_mock):
    requests_mock.get(f"{API}/Software/microsoft-_-edge/vulnerabilities", json={"value": [vulnerability()]})

    run = xsoar.run("microsoft-atp-list-vulnerabilities-by-software", args={"id": "microsoft-_-edge"})

    expected = {k: vulnerability()[k] for k in mde.VULNERABILITY_FIELDS}
    assert run.context == {"MicrosoftATP.SoftwareCVE(val.id && val.id == obj.id)": [expected],
                           CVE_KEY: [cve_context()]}


def test_missing_kbs_by_software(xsoar, requests_mock):
    requests_mock.get(f"{API}/Software/microsoft-_-edge/getmissingkbs", json={"value": [kb()]})

    run = xsoar.run("microsoft-atp-list-missing-kb-by-software", args={"id": "microsoft-_-edge"})

    assert run.context == {"MicrosoftATP.SoftwareKB(val.id && val.id == obj.id)": [kb()]}


def test_unknown_software_is_a_clear_error(xsoar, requests_mock):
    requests_mock.get(f"{API}/Software/contoso-_-nothing/getmissingkbs", status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": "Software contoso-_-nothing was not found",
                                      "target": "x"}})
    run = xsoar.run("microsoft-atp-list-missing-kb-by-software", args={"id": "contoso-_-nothing"})
    assert "contoso-_-nothing was not found" in run.error and "Traceback" not in run.error


# ---- vulnerabilities --------------------------------------------------------------------------------------------
def test_list_vulnerabilities_every_filter(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/vulnerabilities", json={"value": [vulnerability()]})

    run = xsoar.run("microsoft-atp-list-vulnerabilities", args={
        "id": f"{CVE.lower()},{CVE2}", "name_equal": CVE, "name_contains": "2024", "description_contains": "it's",
        "published_on": "2024-01-01T00:00:00Z", "updated_on": "2024-02-01T00:00:00Z", "cvss": "7.5",
        "severity": "critical,High", "limit": "5", "offset": "10"})

    assert query(route.last_request) == {
        "$filter": [f"id in ('{CVE}', '{CVE2}') and name eq '{CVE}' and contains(name,'2024') and "
                    "contains(description,'it''s') and publishedOn ge 2024-01-01T00:00:00Z and "
                    "updatedOn ge 2024-02-01T00:00:00Z and cvssV3 ge 7.5 and severity in ('Critical', 'High')"],
        "$top": ["5"], "$skip": ["10"]}
    assert run.context["MicrosoftATP.Vulnerability(val.id && val.id == obj.id)"][0]["cvssV3"] == 9.8
    assert run.context[CVE_KEY] == [cve_context()]


def test_list_vulnerabilities_relative_dates_use_the_clock(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/vulnerabilities", json={"value": []})
    xsoar.run("microsoft-atp-list-vulnerabilities", args={"published_on": "30 days"})
    expected = mde.format_datetime(xsoar.clock.utcnow() - dt.timedelta(days=30))
    assert query(route.last_request)["$filter"] == [f"publishedOn ge {expected}"]


@pytest.mark.parametrize("args, message", [
    ({"cvss": "eleven"}, "cvss must be a number from 0 to 10"),
    ({"cvss": "11"}, "cvss must be a number from 0 to 10"),
    ({"severity": "Severe"}, "severity must be one of Low, Medium, High, Critical"),
    ({"id": "CVE-24-1"}, "id must be a CVE ID"),
    ({"published_on": "last tuesday"}, "published_on must be an ISO 8601 time"),
    ({"limit": "0"}, "limit must be at least 1"),
])
def test_list_vulnerabilities_bad_arguments(xsoar, requests_mock, args, message):
    run = xsoar.run("microsoft-atp-list-vulnerabilities", args=args)
    assert message in run.error
    assert api_calls(requests_mock) == []


def _pages(total: int, make):
    """A requests-mock callback serving `total` records in $top/$skip pages, as Microsoft does."""
    def respond(request, context):
        q = query(request)
        top, skip = int(q["$top"][0]), int(q["$skip"][0])
        return {"value": [make(i) for i in range(skip, min(total, skip + top))]}
    return respond


def test_list_vulnerabilities_pages_at_8000_across_the_limit(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/vulnerabilities",
                              json=_pages(8500, lambda i: vulnerability(f"CVE-2024-{10000 + i}")))

    run = xsoar.run("microsoft-atp-list-vulnerabilities", args={"limit": "8200", "offset": "100"})

    assert [(q["$top"], q["$skip"]) for q in map(query, route.request_history)] == [
        (["8000"], ["100"]), (["200"], ["8100"])]
    rows = run.context["MicrosoftATP.Vulnerability(val.id && val.id == obj.id)"]
    assert len(rows) == 8200 and rows[0]["id"] == "CVE-2024-10100" and rows[-1]["id"] == "CVE-2024-18299"
    assert len(run.context[CVE_KEY]) == 8200
    assert "Showing 50 of 8200 rows" in run.entry["HumanReadable"]


def test_list_vulnerabilities_all_results_walks_every_page(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/vulnerabilities",
                              json=_pages(16001, lambda i: vulnerability(f"CVE-2024-{10000 + i}")))

    run = xsoar.run("microsoft-atp-list-vulnerabilities", args={"all_results": "true", "limit": "3"})

    assert [q["$skip"] for q in map(query, route.request_history)] == [["0"], ["8000"], ["16000"]]
    assert all(q["$top"] == ["8000"] for q in map(query, route.request_history))
    assert len(run.context["MicrosoftATP.Vulnerability(val.id && val.id == obj.id)"]) == 16001
    assert run.entry["Contents"]["count"] == 16001 and len(run.entry["Contents"]["sample"]) == 50


# ---- machine vulnerabilities ----------------------------------------------------------------------------------
MACHINE_CVE_KEY = "MicrosoftATP.MachineCVE(val.id && val.id == obj.id)"


def test_vulnerabilities_by_machine_every_filter_in_one_query(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/vulnerabilities/machinesVulnerabilities", json={"value": [machine_vuln()]})

    run = xsoar.run("microsoft-atp-list-vulnerabilities-by-machine", args={
        "software_id": "microsoft-_-outlook,google-_-chrome", "cve_id": CVE, "product_name": "outlook",
        "product_version": "16.0.0", "severity": "critical", "product_vendor": "microsoft", "limit": "10",
        "offset": "30"})

    assert query(route.last_request) == {
        "$filter": ["((productVendor eq 'microsoft' and productName eq 'outlook') or "
                    "(productVendor eq 'google' and productName eq 'chrome')) and "
                    f"cveId eq '{CVE}' and productName eq 'outlook' and productVersion eq '16.0.0' and "
                    "severity eq 'Critical' and productVendor eq 'microsoft'"], "$top": ["10"], "$skip": ["30"]}
    assert run.context == {MACHINE_CVE_KEY: [machine_vuln()], CVE_KEY: [{"ID": CVE}]}


def test_vulnerabilities_by_machine_reports_each_machine_and_survives_one_failure(xsoar, requests_mock):
    def respond(request, context):
        machine_id = query(request)["$filter"][0].split("'")[1]
        if machine_id == MID3:
            context.status_code = 400
            return {"error": {"code": "BadRequest", "message": "Invalid machine", "target": "t"}}
        return {"value": [machine_vuln(MID)] if machine_id == MID else []}
    route = requests_mock.get(f"{API}/vulnerabilities/machinesVulnerabilities", json=respond)

    run = xsoar.run("microsoft-atp-list-vulnerabilities-by-machine",
                    args={"machine_id": f"{MID},{MID2},{MID3}", "severity": "High,Critical"})

    assert [query(r)["$filter"][0] for r in route.request_history] == [
        f"machineId eq '{m}' and severity in ('High', 'Critical')" for m in (MID, MID2, MID3)]
    assert run.context == {MACHINE_CVE_KEY: [machine_vuln(MID)], CVE_KEY: [{"ID": CVE}]}
    readable = run.entry["HumanReadable"]
    assert f"|{MID}|1|" in readable and f"|{MID2}|none found|" in readable
    assert MID3 in readable.split("### Failed")[1] and "Invalid machine" in readable


def test_vulnerabilities_by_machine_fails_only_when_every_machine_failed(xsoar, requests_mock):
    requests_mock.get(f"{API}/vulnerabilities/machinesVulnerabilities", status_code=403,
                      json={"error": {"code": "Forbidden", "message": "Missing Vulnerability.Read.All", "target": "t"}})
    run = xsoar.run("microsoft-atp-list-vulnerabilities-by-machine", args={"machine_id": f"{MID},{MID2}"})
    assert "failed for every item" in run.error and "Vulnerability.Read.All" in run.error


def test_a_100000_row_machine_vulnerability_walk_keeps_one_mapped_copy(xsoar, requests_mock):
    total = 100_000
    requests_mock.get(f"{API}/vulnerabilities/machinesVulnerabilities",
                      json=_pages(total, lambda i: machine_vuln(MID, f"CVE-2024-{10000 + i % 500}", i)))
    tracemalloc.start()
    try:
        run = xsoar.run("microsoft-atp-list-vulnerabilities-by-machine", args={"all_results": "true"})
        _, peak = tracemalloc.get_traced_memory()
        rows = run.context[MACHINE_CVE_KEY]
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == total and len(run.context[CVE_KEY]) == 500
    assert run.entry["Contents"]["count"] == total and len(run.entry["Contents"]["sample"]) == 50
    # what stays is the mapped rows; the walk's peak adds one page of raw records, not a second copy of all
    # (measured: about 1.12 streamed; holding the raw records until mapping them reaches about 1.35)
    assert peak < kept * 1.25, (peak, kept)


def test_machines_by_vulnerability_merges_machines_and_reports_unknown_cves(xsoar, requests_mock):
    requests_mock.get(f"{API}/vulnerabilities/{CVE}/machineReferences",
                      json={"value": [machine_reference(MID), machine_reference(MID2)]})
    requests_mock.get(f"{API}/vulnerabilities/{CVE2}/machineReferences", json={"value": [machine_reference(MID)]})
    requests_mock.get(f"{API}/vulnerabilities/CVE-2020-99999/machineReferences", status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": "Vulnerability not found", "target": "t"}})
    requests_mock.get(f"{API}/vulnerabilities/CVE-2021-12345/machineReferences", json={"value": []})

    run = xsoar.run("microsoft-atp-list-machines-by-vulnerability",
                    args={"cve_id": f"{CVE},{CVE2.lower()},CVE-2020-99999,CVE-2021-12345", "ran_once_flag": "true"})

    machines = run.context["MicrosoftATP.CveMachine(val.ID && val.ID == obj.ID)"]
    assert machines == [
        {"ID": MID, "ComputerDNSName": "desktop-1.contoso.com", "OSPlatform": "Windows11",
         "RBACGroupName": "Workstations", "RBACGroupID": 4311, "CVE": [CVE, CVE2]},
        {"ID": MID2, "ComputerDNSName": "desktop-1.contoso.com", "OSPlatform": "Windows11",
         "RBACGroupName": "Workstations", "RBACGroupID": 4311, "CVE": [CVE]}]
    readable = run.entry["HumanReadable"]
    assert "CVE-2020-99999" in readable.split("### Failed")[1] and "No exposed machines for: CVE-2021-12345" in readable


def test_machines_by_vulnerability_refuses_a_malformed_cve_before_any_call(xsoar, requests_mock):
    run = xsoar.run("microsoft-atp-list-machines-by-vulnerability", args={"cve_id": f"{CVE},CVE-2024-1/../x"})
    assert "cve_id must be a CVE ID" in run.error and api_calls(requests_mock) == []


# ---- one machine ------------------------------------------------------------------------------------------------
def test_get_machine_software_in_pascal_case(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}/software", json={"value": [software()]})

    run = xsoar.run("microsoft-atp-get-machine-software", args={"machine_id": MID.upper()})

    assert run.context == {MACHINE_SOFTWARE_KEY: [{
        "ID": "microsoft-_-edge", "Name": "edge", "Vendor": "microsoft", "Weaknesses": 467, "PublicExploit": True,
        "ActiveAlert": False, "ExposedMachines": 172, "InstalledMachines": 300, "ImpactScore": 2.39947438,
        "IsNormalized": True, "Category": "Application", "Distributions": [{"version": "1.0"}]}]}


def test_get_machine_missing_kbs(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}/getmissingkbs", json={"value": [kb()]})

    run = xsoar.run("microsoft-atp-get-machine-missing-kbs", args={"machine_id": MID})

    assert run.context == {"MicrosoftATP.PublicProductFix(val.ID && val.ID == obj.ID)": [{
        "ID": "4540673", "Name": "March 2020 Security Updates", "ProductsNames": ["edge"],
        "URL": "https://catalog.update.microsoft.com/v7/site/Search.aspx?q=KB4540673", "MachineMissedOn": 240,
        "CVEAddressed": 14, "OSBuild": 19045}]}


def test_get_machine_vulnerabilities_waits_out_the_50_per_minute_quota(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/machines/{MID}/vulnerabilities", [
        {"status_code": 429, "headers": {"Retry-After": "7"},
         "json": {"error": {"code": "429", "message": "API calls quota exceeded! Maximum allowed 50 per 00:01:00",
                            "target": "t"}}},
        {"json": {"value": [vulnerability(cveSupportability=None, CveSupportability="supported")]}}])

    run = xsoar.run("microsoft-atp-get-machine-vulnerabilities", args={"machine_id": MID})

    assert route.call_count == 2 and xsoar.sleeps == [7]
    assert run.context == {
        "MicrosoftATP.PublicVulnerability(val.ID && val.ID == obj.ID)": [{
            "ID": CVE, "Name": CVE, "CVESupportability": "supported", "CVSSV3": 9.8,
            "CVSSVector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "Description": "Remote code execution in the mail client.", "EPSS": 0.93, "ExploitInKit": False,
            "ExploitTypes": ["Remote code execution"], "ExploitUris": ["https://exploits.example/1"],
            "ExploitVerified": True, "ExposedMachines": 4, "FirstDetected": "2024-02-20T08:00:00Z",
            "PublicExploit": True, "PublishedOn": "2024-02-13T00:00:00Z", "Severity": "Critical", "Tags": ["ZeroDay"],
            "UpdatedOn": "2024-03-01T16:20:00Z"}],
        CVE_KEY: [cve_context()]}


@pytest.mark.parametrize("command", ["microsoft-atp-get-machine-software", "microsoft-atp-get-machine-missing-kbs",
                                     "microsoft-atp-get-machine-vulnerabilities"])
@pytest.mark.parametrize("bad", ["desktop-1", "../" + MID, MID + "/x"])
def test_machine_ids_are_validated(xsoar, requests_mock, command, bad):
    run = xsoar.run(command, args={"machine_id": bad})
    assert "machine_id must be a machine ID of 40 hexadecimal characters" in run.error
    assert api_calls(requests_mock) == []


def test_cve_context_shape_is_the_standard_one():
    assert set(mde.cve_context(vulnerability())) == {"ID", "CVSS", "Description", "Published", "Modified"}
    assert mde.cve_context(machine_vuln()) == {"ID": CVE}


# ---- recommendations, score, remediation ------------------------------------------------------------------------
RECOMMENDATION_KEY = "MicrosoftATP.Recommendation(val.ID && val.ID == obj.ID)"


def test_list_security_recommendations_filters(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/recommendations", json={"value": [recommendation()]})

    run = xsoar.run("microsoft-atp-list-security-recommendations", args={
        "id": "va-_-microsoft-_-edge", "product_name": "edge", "vendor": "microsoft", "severity_score": "7",
        "status": "active", "remediation_type": "Update,upgrade", "limit": "20"})

    assert query(route.last_request) == {
        "$filter": ["id eq 'va-_-microsoft-_-edge' and productName eq 'edge' and vendor eq 'microsoft' and "
                    "severityScore ge 7.0 and status eq 'Active' and remediationType in ('Update', 'Upgrade')"],
        "$top": ["20"], "$skip": ["0"]}
    context = run.context[RECOMMENDATION_KEY][0]
    assert context["ID"] == "va-_-microsoft-_-edge" and context["ExposureImpact"] == 7.67
    assert "Machines" not in context and len(api_calls(requests_mock)) == 1


def test_recommendations_with_their_machines_and_vulnerabilities(xsoar, requests_mock):
    second = recommendation("sca-_-scid-2010", productName=None, remediationType="ConfigurationChange")
    requests_mock.get(f"{API}/recommendations", json={"value": [recommendation(), second]})
    requests_mock.get(f"{API}/recommendations/va-_-microsoft-_-edge/machineReferences",
                      json={"value": [machine_reference()]})
    requests_mock.get(f"{API}/recommendations/sca-_-scid-2010/machineReferences", status_code=500,
                      json={"error": {"code": "InternalServerError", "message": "boom", "target": "t"}})
    requests_mock.get(f"{API}/recommendations/va-_-microsoft-_-edge/vulnerabilities",
                      json={"value": [vulnerability()]})
    requests_mock.get(f"{API}/recommendations/sca-_-scid-2010/vulnerabilities", json={"value": []})

    run = xsoar.run("microsoft-atp-list-security-recommendations",
                    args={"include_machines": "true", "include_vulnerabilities": "true"})

    first, other = run.context[RECOMMENDATION_KEY]
    assert first["Machines"] == [{"ID": MID, "ComputerDNSName": "desktop-1.contoso.com", "OSPlatform": "Windows11",
                                  "RBACGroupName": "Workstations"}]
    assert first["Vulnerabilities"] == [{"ID": CVE, "Severity": "Critical", "CVSSV3": 9.8, "PublicExploit": True}]
    assert "Machines" not in other and other["Vulnerabilities"] == []
    assert run.context[CVE_KEY] == [cve_context()]
    assert "sca-_-scid-2010" in run.entry["HumanReadable"].split("### Failed")[1]


def test_get_exposure_score_and_by_machine_group(xsoar, requests_mock):
    requests_mock.get(f"{API}/exposureScore", json={"@odata.context": "x", "time": "2024-12-03T09:51:28.214338Z",
                                                    "score": 41.38})
    groups = requests_mock.get(f"{API}/exposureScore/ByMachineGroups", json={"value": [
        {"time": "2024-12-03T09:51:28Z", "score": 37.4, "rbacGroupName": "Servers", "rbacGroupId": 4310}]})

    only = xsoar.run("microsoft-atp-get-exposure-score")
    assert only.context == {"MicrosoftATP.ExposureScore": [{"Time": "2024-12-03T09:51:28.214338Z", "Score": 41.38}]}
    assert not groups.called

    both = xsoar.run("microsoft-atp-get-exposure-score", args={"by_machine_group": "true"})
    assert both.context["MicrosoftATP.MachineGroupExposureScore(val.RBACGroupName && "
                        "val.RBACGroupName == obj.RBACGroupName)"] == [
        {"Time": "2024-12-03T09:51:28Z", "Score": 37.4, "RBACGroupName": "Servers", "RBACGroupID": 4310}]
    assert "Exposure score by device group" in both.entry["HumanReadable"]


def test_list_remediation_tasks_filters(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/remediationTasks", json={"value": [task()]})

    run = xsoar.run("microsoft-atp-list-remediation-tasks",
                    args={"status": "completed", "creation_time": "2024-01-01T00:00:00Z", "limit": "5"})

    assert query(route.last_request) == {"$filter": ["status eq 'Completed' and createdOn ge 2024-01-01T00:00:00Z"],
                                         "$top": ["5"], "$skip": ["0"]}
    context = run.context["MicrosoftATP.RemediationTask(val.ID && val.ID == obj.ID)"][0]
    assert context["ID"] == TASK_ID and context["RBACGroupNames"] == ["Servers"] and context["ProductID"] == \
        "microsoft-_-silverlight"


def test_remediation_tasks_by_id_with_one_unknown(xsoar, requests_mock):
    other = "00000000-0000-4000-8000-000000000000"
    requests_mock.get(f"{API}/remediationTasks/{TASK_ID}", json=task())
    requests_mock.get(f"{API}/remediationTasks/{other}", status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": "Task not found", "target": "t"}})

    run = xsoar.run("microsoft-atp-list-remediation-tasks", args={"id": f"{TASK_ID},{other}"})

    assert [t["ID"] for t in run.context["MicrosoftATP.RemediationTask(val.ID && val.ID == obj.ID)"]] == [TASK_ID]
    assert other in run.entry["HumanReadable"].split("### Failed")[1]
    bad = xsoar.run("microsoft-atp-list-remediation-tasks", args={"id": "not-a-guid"})
    assert "id must be a remediation task ID" in bad.error


def test_list_auth_permissions_knows_the_vulnerability_management_roles(xsoar, requests_mock):
    mock_entra(requests_mock, token=make_jwt({"roles": ["Software.Read.All", "Vulnerability.Read.All"]}))
    run = xsoar.run("microsoft-atp-list-auth-permissions")
    readable = run.entry["HumanReadable"]
    for role, blocked in (("SecurityRecommendation.Read.All", "microsoft-atp-list-security-recommendations"),
                          ("Score.Read.All", "microsoft-atp-get-exposure-score"),
                          ("RemediationTasks.Read.All", "microsoft-atp-list-remediation-tasks")):
        line = next(line for line in readable.splitlines() if line.startswith(f"|{role}|"))
        assert blocked in line
    assert "microsoft-atp-list-software" not in readable and "microsoft-atp-get-machine-vulnerabilities" not in readable


# ---- hostile values -------------------------------------------------------------------------------------------
VULNERABILITY_SCHEMA = emulator_odata.Schema("Vulnerabilities", ("id", "name", "description"),
                                             filterable={"id": "str", "name": "str", "description": "str"})
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=TEXT, fragment=TEXT)
def test_hostile_filter_values_stay_literals(xsoar, requests_mock, name, fragment):
    """Whatever the user types, the filter Microsoft receives matches exactly the records with that text."""
    requests_mock.reset_mock()
    route = requests_mock.get(f"{API}/vulnerabilities", json={"value": []})
    xsoar.run("microsoft-atp-list-vulnerabilities", args={"name_equal": name, "description_contains": fragment})
    if not name.strip() or not fragment.strip():
        return
    sent = unquote(urlparse(route.last_request.url).query.split("$filter=")[1].split("&")[0])
    matches = emulator_odata.compile_filter(sent, VULNERABILITY_SCHEMA)
    record = {"name": name.strip(), "description": f"x{fragment.strip()}y"}
    assert matches(record)
    assert not matches({**record, "name": name.strip() + "'"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=30))
def test_hostile_path_values_never_leave_their_segment(xsoar, requests_mock, value):
    requests_mock.reset_mock()
    requests_mock.get(f"{API}/Software/{mde.quote(value.strip().lower(), safe='')}/machineReferences",
                      json={"value": []})
    run = xsoar.run("microsoft-atp-list-machines-by-software", args={"id": value})
    calls = api_calls(requests_mock)
    if run.errors:
        assert "id" in run.errors[0] and calls == []
        return
    path = urlparse(calls[0].url).path
    assert path.count("/") == 4 and path.startswith("/api/Software/") and path.endswith("/machineReferences")

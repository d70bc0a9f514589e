"""Alerts and automated investigations: every command at the HTTP boundary, driven through main()."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from conftest import API, context_paths, mock_entra

import MicrosoftDefenderForEndpoint as mde

ALERT_ID = "da637472900382838869_1364969609"
OTHER_ALERT_ID = "da637472900382838870_1364969610"
MACHINE_ID = "4899036531e374137f63289c3267bad772c13fef"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
ALERT_CONTEXT = "MicrosoftATP.Alert(val.ID && val.ID == obj.ID)"
INVESTIGATION_CONTEXT = "MicrosoftATP.Investigation(val.ID && val.ID == obj.ID)"

EVIDENCE = [
    {"entityType": "Process", "evidenceCreationTime": "2024-05-01T10:00:01.1234567Z", "sha1": SHA1,
     "sha256": SHA256, "fileName": "powershell.exe", "filePath": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
     "processId": 4321, "processCommandLine": "powershell.exe -enc AAAA",
     "processCreationTime": "2024-05-01T09:59:58.1Z", "parentProcessId": 1234,
     "parentProcessCreationTime": "2024-05-01T09:00:00Z", "parentProcessFileName": "explorer.exe",
     "parentProcessFilePath": "C:\\Windows", "ipAddress": None, "url": None, "registryKey": None,
     "registryHive": None, "registryValueType": None, "registryValue": None, "accountName": "user1",
     "domainName": "CONTOSO", "userSid": "S-1-5-21-1-2-3-1001", "aadUserId": "6e7a2f5c-0000-4000-8000-000000000001",
     "userPrincipalName": "user1@contoso.com", "detectionStatus": "Detected"},
    {"entityType": "Registry", "evidenceCreationTime": "2024-05-01T10:00:01Z", "sha1": None, "sha256": None,
     "fileName": None, "filePath": None, "processId": None, "processCommandLine": None, "processCreationTime": None,
     "parentProcessId": None, "parentProcessCreationTime": None, "parentProcessFileName": None,
     "parentProcessFilePath": None, "ipAddress": "10.0.0.5", "url": "http://evil.example/payload",
     "registryKey": "SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run", "registryHive": "HKEY_LOCAL_MACHINE",
     "registryValueType": "String", "registryValue": "evil.exe", "accountName": None, "domainName": None,
     "userSid": None, "aadUserId": None, "userPrincipalName": None, "detectionStatus": "Prevented"},
]


def api_alert(alert_id: str = ALERT_ID, **overrides) -> dict:
    """An alert as Microsoft returns it, with every documented field."""
    return {
        "id": alert_id, "incidentId": 1126093, "investigationId": 1234, "investigationState": "Running",
        "assignedTo": "secop@contoso.com", "severity": "Medium", "status": "New", "classification": "TruePositive",
        "determination": "Malware", "detectionSource": "WindowsDefenderAtp", "detectorId": "17e10bbc-3a68-474a",
        "category": "Execution", "threatFamilyName": "Emotet", "threatName": "Trojan:Win32/Emotet",
        "title": "Suspicious PowerShell command line", "description": "A suspicious PowerShell command ran.",
        "alertCreationTime": "2024-05-01T10:00:00.1234567Z", "firstEventTime": "2024-05-01T09:59:58.1Z",
        "lastEventTime": "2024-05-01T09:59:59Z", "lastUpdateTime": "2024-05-01T10:05:00Z",
        "resolvedTime": None, "machineId": MACHINE_ID, "computerDnsName": "ws1.contoso.com",
        "rbacGroupName": "Workstations", "aadTenantId": "11111111-2222-3333-4444-555555555555",
        "mitreTechniques": ["T1059.001"], "relatedUser": {"userName": "user1", "domainName": "CONTOSO"},
        "comments": [{"comment": "Looking into it", "createdBy": "secop@contoso.com",
                      "createdTime": "2024-05-01T10:10:00Z"}],
        "evidence": [], **overrides}


def context_alert(alert_id: str = ALERT_ID, **overrides) -> dict:
    """The same alert as the context playbooks read."""
    return {
        "ID": alert_id, "IncidentID": 1126093, "InvestigationID": 1234, "InvestigationState": "Running",
        "AssignedTo": "secop@contoso.com", "Severity": "Medium", "Status": "New", "Classification": "TruePositive",
        "Determination": "Malware", "DetectionSource": "WindowsDefenderAtp", "DetectorID": "17e10bbc-3a68-474a",
        "Category": "Execution", "ThreatFamilyName": "Emotet", "ThreatName": "Trojan:Win32/Emotet",
        "Title": "Suspicious PowerShell command line", "Description": "A suspicious PowerShell command ran.",
        "AlertCreationTime": "2024-05-01T10:00:00.1234567Z", "FirstEventTime": "2024-05-01T09:59:58.1Z",
        "LastEventTime": "2024-05-01T09:59:59Z", "LastUpdateTime": "2024-05-01T10:05:00Z", "ResolvedTime": None,
        "MachineID": MACHINE_ID, "ComputerDNSName": "ws1.contoso.com", "RBACGroupName": "Workstations",
        "AADTenantID": "11111111-2222-3333-4444-555555555555", "MitreTechniques": ["T1059.001"],
        "RelatedUser": {"userName": "user1", "domainName": "CONTOSO"},
        "Comments": [{"Comment": "Looking into it", "CreatedBy": "secop@contoso.com",
                      "CreatedTime": "2024-05-01T10:10:00Z"}],
        "Evidence": [], **overrides}


API_USER = {
    "id": "contoso\\user1", "accountName": "user1", "accountDomain": "contoso", "accountSid": "S-1-5-21-1-2-3-1001",
    "firstSeen": "2024-04-01T00:00:00Z", "lastSeen": "2024-05-01T00:00:00Z",
    "mostPrevalentMachineId": MACHINE_ID, "leastPrevalentMachineId": MACHINE_ID, "logonTypes": "Network",
    "logOnMachinesCount": 3, "isDomainAdmin": False, "isOnlyNetworkUser": True}
CONTEXT_USER = {
    "ID": "contoso\\user1", "AccountName": "user1", "AccountDomain": "contoso", "AccountSID": "S-1-5-21-1-2-3-1001",
    "FirstSeen": "2024-04-01T00:00:00Z", "LastSeen": "2024-05-01T00:00:00Z", "MostPrevalentMachineID": MACHINE_ID,
    "LeastPrevalentMachineID": MACHINE_ID, "LogonTypes": "Network", "LogonCount": 3, "DomainAdmin": False,
    "NetworkUser": True}


def api_file(n: int) -> dict:
    return {"sha1": f"{n:040x}", "sha256": f"{n:064x}", "md5": f"{n:032x}", "globalPrevalence": 1000 + n,
            "globalFirstObserved": "2023-01-01T00:00:00Z", "globalLastObserved": "2024-05-01T00:00:00Z",
            "size": 1024 * n, "fileType": "PortableExecutable", "isPeFile": True, "filePublisher": "Contoso",
            "fileProductName": "Tool", "signer": "Contoso Ltd", "issuer": "Contoso CA", "signerHash": f"{n:040x}",
            "isValidCertificate": False, "determinationType": "Malware", "determinationValue": "Trojan:Win32/X"}


def context_file(n: int) -> dict:
    return {"Sha1": f"{n:040x}", "Sha256": f"{n:064x}", "Md5": f"{n:032x}", "GlobalPrevalence": 1000 + n,
            "GlobalFirstObserved": "2023-01-01T00:00:00Z", "GlobalLastObserved": "2024-05-01T00:00:00Z",
            "Size": 1024 * n, "FileType": "PortableExecutable", "IsPeFile": True, "FilePublisher": "Contoso",
            "FileProductName": "Tool", "Signer": "Contoso Ltd", "Issuer": "Contoso CA", "SignerHash": f"{n:040x}",
            "IsValidCertificate": False, "DeterminationType": "Malware", "DeterminationValue": "Trojan:Win32/X"}


API_INVESTIGATION = {
    "id": "63017", "startTime": "2024-05-01T10:20:00Z", "endTime": None, "state": "Running", "cancelledBy": None,
    "statusDetails": None, "machineId": MACHINE_ID, "computerDnsName": "ws1.contoso.com",
    "triggeringAlertId": ALERT_ID}
CONTEXT_INVESTIGATION = {
    "ID": "63017", "StartTime": "2024-05-01T10:20:00Z", "EndTime": None, "State": "Running", "CancelledBy": None,
    "StatusDetails": None, "MachineID": MACHINE_ID, "ComputerDNSName": "ws1.contoso.com",
    "TriggeringAlertID": ALERT_ID}


@pytest.fixture(autouse=True)
def token(requests_mock):
    return mock_entra(requests_mock)


def query(request) -> dict[str, list[str]]:
    return parse_qs(urlparse(request.url).query)


def api_calls(requests_mock) -> list:
    return [r for r in requests_mock.request_history if r.url.startswith(API)]


# ---- list alerts ------------------------------------------------------------------------------------


def test_list_alerts_defaults_to_the_first_50_without_a_filter(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts", json={"value": [api_alert()]})

    run = xsoar.run("microsoft-atp-list-alerts", args={"ran_once_flag": "true"})

    assert query(route.last_request) == {"$top": ["50"], "$skip": ["0"]}
    assert run.context == {ALERT_CONTEXT: [context_alert()]}
    assert "|ID|Title|Severity|Status|AlertCreationTime|" in run.entry["HumanReadable"]
    assert run.entry["Contents"] == [api_alert()]


def test_list_alerts_filters_pages_and_expands_evidence(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts", json={"value": [api_alert(evidence=EVIDENCE)]})

    run = xsoar.run("microsoft-atp-list-alerts", args={
        "severity": "high,Medium", "status": "New", "category": "Malware", "creation_time": "2024-05-01T10:00:00Z",
        "limit": "5", "offset": "10", "evidence": "true"})

    assert query(route.last_request) == {
        "$filter": ["severity in ('High', 'Medium') and status eq 'New' and category eq 'Malware' and "
                    "alertCreationTime ge 2024-05-01T10:00:00Z"],
        "$expand": ["evidence"], "$top": ["5"], "$skip": ["10"]}
    # evidence keeps Microsoft's camelCase names: playbooks read MicrosoftATP.Alert.Evidence.sha1 and so on
    assert run.context == {ALERT_CONTEXT: [context_alert(Evidence=EVIDENCE)]}


def test_list_alerts_accepts_a_relative_creation_time(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts", json={"value": []})

    run = xsoar.run("microsoft-atp-list-alerts", args={"creation_time": "3 days"})

    literal = query(route.last_request)["$filter"][0].removeprefix("alertCreationTime ge ")
    sent = mde.parse_iso_datetime(literal)
    assert sent == xsoar.clock.utcnow() - dt.timedelta(days=3)  # the plugin's clock, not the wall clock
    assert run.context == {}
    assert "No entries" in run.entry["HumanReadable"]


def test_list_alerts_escapes_quotes_in_the_category(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts", json={"value": []})
    xsoar.run("microsoft-atp-list-alerts", args={"category": "it's"})
    assert query(route.last_request)["$filter"] == ["category eq 'it''s'"]


# ---- get alerts by id --------------------------------------------------------------------------------


def test_get_alert_by_id_fetches_each_alert(xsoar, requests_mock):
    first = requests_mock.get(f"{API}/alerts/{ALERT_ID}", json=api_alert())
    second = requests_mock.get(f"{API}/alerts/{OTHER_ALERT_ID}", json=api_alert(OTHER_ALERT_ID))

    run = xsoar.run("microsoft-atp-get-alert-by-id", args={"alert_ids": f"{ALERT_ID}, {OTHER_ALERT_ID}"})

    assert first.called and second.called
    assert query(first.last_request) == {}
    assert run.context == {ALERT_CONTEXT: [context_alert(), context_alert(OTHER_ALERT_ID)]}


def test_enrichment_playbook_call_fills_every_evidence_path_without_asking_for_evidence(xsoar, requests_mock):
    """"MDE Malware - Incident Enrichment" runs `get-alert-by-id alert_ids=<id>` and reads the evidence paths.

    Microsoft's single-alert response carries the evidence, so no `evidence=true` (and no $expand) is needed."""
    requests_mock.get(f"{API}/alerts/{ALERT_ID}", json=api_alert(evidence=EVIDENCE))

    run = xsoar.run("microsoft-atp-get-alert-by-id", args={"alert_ids": ALERT_ID})

    evidence = run.context[ALERT_CONTEXT][0]["Evidence"]
    command = next(c for c in YML["script"]["commands"] if c["name"] == "microsoft-atp-get-alert-by-id")
    declared = [o["contextPath"].removeprefix("MicrosoftATP.Alert.Evidence.") for o in command["outputs"]
                if o["contextPath"].startswith("MicrosoftATP.Alert.Evidence.")]
    assert len(declared) >= 17
    assert [field for field in declared if all(item.get(field) is None for item in evidence)] == []


def test_get_alert_by_id_can_include_evidence(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts/{ALERT_ID}", json=api_alert(evidence=EVIDENCE))

    run = xsoar.run("microsoft-atp-get-alert-by-id", args={"alert_ids": [ALERT_ID], "evidence": "true"})

    assert query(route.last_request) == {"$expand": ["evidence"]}
    assert run.context[ALERT_CONTEXT][0]["Evidence"] == EVIDENCE


def test_get_alert_by_id_keeps_the_alerts_it_found(xsoar, requests_mock):
    requests_mock.get(f"{API}/alerts/{ALERT_ID}", json=api_alert())
    requests_mock.get(f"{API}/alerts/missing1", status_code=404, json={
        "error": {"code": "NotFound", "message": "Alert missing1 was not found", "target": "c0ffee"}})

    run = xsoar.run("microsoft-atp-get-alert-by-id", args={"alert_ids": f"{ALERT_ID},missing1"})

    assert run.context == {ALERT_CONTEXT: [context_alert()]}
    assert "### Failed" in run.entry["HumanReadable"]
    assert "|missing1|GET /alerts/missing1 failed with HTTP 404 NotFound" in run.entry["HumanReadable"]


def test_get_alert_by_id_fails_when_no_alert_was_found(xsoar, requests_mock):
    requests_mock.get(f"{API}/alerts/missing1", status_code=404, json={
        "error": {"code": "NotFound", "message": "Alert missing1 was not found", "target": "c0ffee"}})

    run = xsoar.run("microsoft-atp-get-alert-by-id", args={"alert_ids": "missing1"})

    assert run.error.startswith("Getting alerts failed for every item:\n- missing1: GET /alerts/missing1 failed with "
                                "HTTP 404")
    assert "(correlation id: c0ffee)" in run.error


# ---- update and create ----------------------------------------------------------------------------------


def test_update_alert_sends_only_the_given_fields_in_camel_case(xsoar, requests_mock):
    route = requests_mock.patch(f"{API}/alerts/{ALERT_ID}", json=api_alert(status="Resolved"))

    run = xsoar.run("microsoft-atp-update-alert", args={
        "alert_id": ALERT_ID, "status": "resolved", "assigned_to": "secop@contoso.com",
        "classification": "TruePositive", "determination": "malware", "comment": "Contained"})

    assert route.last_request.json() == {"status": "Resolved", "assignedTo": "secop@contoso.com",
                                         "classification": "TruePositive", "determination": "Malware",
                                         "comment": "Contained"}
    assert run.context == {ALERT_CONTEXT: [context_alert(Status="Resolved")]}


def test_update_alert_with_only_a_comment(xsoar, requests_mock):
    route = requests_mock.patch(f"{API}/alerts/{ALERT_ID}", json=api_alert())
    xsoar.run("microsoft-atp-update-alert", args={"alert_id": ALERT_ID, "comment": "Seen"})
    assert route.last_request.json() == {"comment": "Seen"}


@pytest.mark.parametrize("given, sent", [
    ("NotMalicious", "NotMalicious"), ("clean", "Clean"), ("CompromisedAccount", "CompromisedAccount"),
    ("CompromisedUser", "CompromisedUser"), ("ConfirmedUserActivity", "ConfirmedUserActivity"),
    ("InsufficientData", "InsufficientData"), ("NotAvailable", "NotAvailable"),
])
def test_update_alert_accepts_both_spellings_of_determinations(xsoar, requests_mock, given, sent):
    route = requests_mock.patch(f"{API}/alerts/{ALERT_ID}", json=api_alert())
    xsoar.run("microsoft-atp-update-alert", args={"alert_id": ALERT_ID, "determination": given})
    assert route.last_request.json() == {"determination": sent}


def test_update_alert_of_an_unknown_alert_explains_the_error(xsoar, requests_mock):
    requests_mock.patch(f"{API}/alerts/{ALERT_ID}", status_code=404, json={
        "error": {"code": "NotFound", "message": f"Alert {ALERT_ID} was not found", "target": "f00d"}})

    run = xsoar.run("microsoft-atp-update-alert", args={"alert_id": ALERT_ID, "status": "Resolved"})

    assert run.error == (f"PATCH /alerts/{ALERT_ID} failed with HTTP 404 NotFound: Alert {ALERT_ID} was not found. "
                         "The object was not found. (correlation id: f00d)")


CREATE_ARGS = {"machine_id": MACHINE_ID.upper(), "severity": "high", "title": "Dropped tool",
               "description": "A known tool was dropped.", "recommended_action": "Isolate the machine.",
               "event_time": "2024-05-01T10:00:00.1234567Z", "report_id": "20776"}


def test_create_alert_by_reference_sends_the_documented_body(xsoar, requests_mock):
    route = requests_mock.post(f"{API}/alerts/CreateAlertByReference", json=api_alert())

    run = xsoar.run("microsoft-atp-create-alert", args={**CREATE_ARGS, "category": "Malware"})

    assert route.last_request.json() == {
        "machineId": MACHINE_ID, "severity": "High", "title": "Dropped tool",
        "description": "A known tool was dropped.", "recommendedAction": "Isolate the machine.",
        "eventTime": "2024-05-01T10:00:00.1234567Z", "reportId": "20776", "category": "Malware"}
    assert run.context == {ALERT_CONTEXT: [context_alert()]}


def test_create_alert_defaults_the_category_as_the_older_integration_did(xsoar, requests_mock):
    route = requests_mock.post(f"{API}/alerts/CreateAlertByReference", json=api_alert())
    xsoar.run("microsoft-atp-create-alert", args=CREATE_ARGS)
    assert route.last_request.json()["category"] == "None"


# ---- alert-related entities -------------------------------------------------------------------------------


def test_get_alert_related_user(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts/{ALERT_ID}/user", json=API_USER)

    run = xsoar.run("microsoft-atp-get-alert-related-user", args={"id": ALERT_ID})

    assert route.called
    assert run.context == {"MicrosoftATP.AlertUser(val.AlertID && val.AlertID == obj.AlertID)": {
        "User": CONTEXT_USER, "AlertID": ALERT_ID}}


def test_get_alert_related_files_pages_on_our_side(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/alerts/{ALERT_ID}/files", json={"value": [api_file(n) for n in range(1, 6)]})

    run = xsoar.run("microsoft-atp-get-alert-related-files", args={"id": ALERT_ID, "limit": "2", "offset": "1"})

    assert query(route.last_request) == {}  # the endpoint does not page: limit and offset are applied here
    assert run.context == {"MicrosoftATP.AlertFile(val.AlertID && val.AlertID == obj.AlertID)": {
        "Files": [context_file(2), context_file(3)], "AlertID": ALERT_ID}}


def test_get_alert_related_ips(xsoar, requests_mock):
    requests_mock.get(f"{API}/alerts/{ALERT_ID}/ips", json={"value": [{"id": "10.0.0.1"}, {"id": "10.0.0.2"}]})

    run = xsoar.run("microsoft-atp-get-alert-related-ips", args={"id": ALERT_ID})

    assert run.context == {"MicrosoftATP.AlertIP(val.AlertID && val.AlertID == obj.AlertID)": {
        "IPs": [{"IpAddress": "10.0.0.1"}, {"IpAddress": "10.0.0.2"}], "AlertID": ALERT_ID}}


def test_get_alert_related_domains_with_limit(xsoar, requests_mock):
    requests_mock.get(f"{API}/alerts/{ALERT_ID}/domains",
                      json={"value": [{"host": "a.example"}, {"host": "b.example"}, {"host": "c.example"}]})

    run = xsoar.run("microsoft-atp-get-alert-related-domains", args={"id": ALERT_ID, "limit": "2"})

    assert run.context == {"MicrosoftATP.AlertDomain(val.AlertID && val.AlertID == obj.AlertID)": {
        "Domains": [{"Domain": "a.example"}, {"Domain": "b.example"}], "AlertID": ALERT_ID}}


def test_related_files_without_permission_points_at_the_permissions_command(xsoar, requests_mock):
    requests_mock.get(f"{API}/alerts/{ALERT_ID}/files", status_code=403,
                      json={"error": {"code": "Forbidden", "message": "Missing File.Read.All", "target": "ab12"}})

    run = xsoar.run("microsoft-atp-get-alert-related-files", args={"id": ALERT_ID})

    assert "HTTP 403 Forbidden: Missing File.Read.All" in run.error
    assert "microsoft-atp-list-auth-permissions" in run.error


# ---- alerts of a machine, file, IP, domain or user --------------------------------------------------------


def test_get_machine_alerts(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/machines/{MACHINE_ID}/alerts", json={"value": [api_alert()]})

    run = xsoar.run("microsoft-atp-get-machine-alerts", args={"machine_id": MACHINE_ID.upper()})

    assert route.called
    assert run.context == {"MicrosoftATP.MachineAlerts(val.ID && val.ID == obj.ID)": [context_alert()]}


@pytest.mark.parametrize("command, args, path, context", [
    ("microsoft-atp-get-file-alerts", {"file_hash": SHA1.upper()}, f"/files/{SHA1}/alerts",
     ("FileAlert", "Sha1", SHA1)),
    ("microsoft-atp-get-ip-alerts", {"ip": " 10.0.0.5 "}, "/ips/10.0.0.5/alerts", ("IPAlert", "IPAddress", "10.0.0.5")),
    ("microsoft-atp-get-ip-alerts", {"ip": "2001:DB8::1"}, "/ips/2001%3Adb8%3A%3A1/alerts",
     ("IPAlert", "IPAddress", "2001:db8::1")),
    ("microsoft-atp-get-domain-alerts", {"domain": "evil.example"}, "/domains/evil.example/alerts",
     ("DomainAlert", "Domain", "evil.example")),
    ("microsoft-atp-get-user-alerts", {"username": "user1"}, "/users/user1/alerts", ("UserAlert", "Username", "user1")),
    ("microsoft-atp-get-user-alerts", {"username": "o'brien"}, "/users/o%27brien/alerts",
     ("UserAlert", "Username", "o'brien")),
])
def test_entity_alert_lookups(xsoar, requests_mock, command, args, path, context):
    route = requests_mock.get(f"{API}{path}", json={"value": [api_alert()]})

    run = xsoar.run(command, args=args)

    assert urlparse(route.last_request.url).path == f"/api{path}"
    entity, key_field, key = context
    assert run.context == {f"MicrosoftATP.{entity}(val.{key_field} && val.{key_field} == obj.{key_field})": {
        key_field: key, "Alerts": [context_alert()]}}


def test_entity_alert_lookup_with_no_alerts(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}/alerts", json={"value": []})

    run = xsoar.run("microsoft-atp-get-file-alerts", args={"file_hash": SHA1})

    assert run.context == {"MicrosoftATP.FileAlert(val.Sha1 && val.Sha1 == obj.Sha1)": {"Sha1": SHA1, "Alerts": []}}
    assert "No entries" in run.entry["HumanReadable"]


# ---- investigations ----------------------------------------------------------------------------------------


def test_list_investigations_pages(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/investigations", json={"value": [API_INVESTIGATION]})

    run = xsoar.run("microsoft-atp-list-investigations", args={"limit": "10", "offset": "20"})

    assert query(route.last_request) == {"$top": ["10"], "$skip": ["20"]}
    assert run.context == {INVESTIGATION_CONTEXT: [CONTEXT_INVESTIGATION]}
    assert "|ID|State|MachineID|ComputerDNSName|StartTime|" in run.entry["HumanReadable"]


def test_list_investigations_by_id(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/investigations/63017", json=API_INVESTIGATION)

    run = xsoar.run("microsoft-atp-list-investigations", args={"id": "63017"})

    assert route.called and query(route.last_request) == {}
    assert run.context == {INVESTIGATION_CONTEXT: [CONTEXT_INVESTIGATION]}


def test_start_investigation_posts_the_comment_and_ignores_timeout(xsoar, requests_mock):
    route = requests_mock.post(f"{API}/machines/{MACHINE_ID}/startInvestigation", status_code=201,
                               json=API_INVESTIGATION)

    run = xsoar.run("microsoft-atp-start-investigation", args={
        "machine_id": MACHINE_ID, "comment": "Suspicious activity", "timeout": "50", "ran_once_flag": "true"})

    assert route.call_count == 1
    assert route.last_request.json() == {"Comment": "Suspicious activity"}
    assert run.context == {INVESTIGATION_CONTEXT: [CONTEXT_INVESTIGATION]}


def test_start_investigation_rate_limited_waits_and_succeeds(xsoar, requests_mock):
    route = requests_mock.post(f"{API}/machines/{MACHINE_ID}/startInvestigation", [
        {"status_code": 429, "headers": {"Retry-After": "30"}, "json": {"error": {"code": "TooManyRequests"}}},
        {"status_code": 201, "json": API_INVESTIGATION}])

    run = xsoar.run("microsoft-atp-start-investigation", args={"machine_id": MACHINE_ID, "comment": "c"})

    assert route.call_count == 2 and xsoar.sleeps == [30.0]
    assert run.context == {INVESTIGATION_CONTEXT: [CONTEXT_INVESTIGATION]}


# ---- argument validation: a clear error and no API call ---------------------------------------------------


@pytest.mark.parametrize("command, args, message", [
    ("microsoft-atp-list-alerts", {"severity": "Critical"}, "severity must be one of Informational, Low, Medium, High"),
    ("microsoft-atp-list-alerts", {"status": "Closed"}, "status must be one of New, InProgress, Resolved"),
    ("microsoft-atp-list-alerts", {"limit": "0"}, "limit must be at least 1"),
    ("microsoft-atp-list-alerts", {"limit": "ten"}, "limit must be a whole number"),
    ("microsoft-atp-list-alerts", {"offset": "-1"}, "offset must be at least 0"),
    ("microsoft-atp-list-alerts", {"creation_time": "last tuesday"}, "creation_time must be an ISO 8601 time"),
    ("microsoft-atp-list-alerts", {"evidence": "maybe"}, "evidence must be true or false"),
    ("microsoft-atp-get-alert-by-id", {"alert_ids": " , "}, "alert_ids is required"),
    ("microsoft-atp-get-alert-by-id", {"alert_ids": ALERT_ID, "evidence": "perhaps"}, "evidence must be true"),
    ("microsoft-atp-update-alert", {"alert_id": ALERT_ID}, "Nothing to update: give at least one of status"),
    ("microsoft-atp-update-alert", {"status": "Resolved"}, "alert_id is required"),
    ("microsoft-atp-update-alert", {"alert_id": ALERT_ID, "status": "Done"}, "status must be one of New"),
    ("microsoft-atp-update-alert", {"alert_id": ALERT_ID, "classification": "Bad"}, "classification must be one of"),
    ("microsoft-atp-update-alert", {"alert_id": ALERT_ID, "determination": "Apt"}, "determination must be one of"),
    ("microsoft-atp-create-alert", {**CREATE_ARGS, "machine_id": "ws1"}, "machine_id must be a machine ID of 40"),
    ("microsoft-atp-create-alert", {**CREATE_ARGS, "severity": "Informational"}, "severity must be one of Low"),
    ("microsoft-atp-create-alert", {**CREATE_ARGS, "event_time": "yesterday"}, "event_time must be the ISO 8601"),
    ("microsoft-atp-create-alert", {**CREATE_ARGS, "category": "Sneaky"}, "category must be one of None"),
    ("microsoft-atp-create-alert", {**CREATE_ARGS, "report_id": ""}, "report_id is required"),
    ("microsoft-atp-get-alert-related-user", {}, "id is required"),
    ("microsoft-atp-get-alert-related-files", {"id": ALERT_ID, "limit": "0"}, "limit must be at least 1"),
    ("microsoft-atp-get-alert-related-ips", {"id": ALERT_ID, "offset": "x"}, "offset must be a whole number"),
    ("microsoft-atp-get-alert-related-domains", {"limit": "5"}, "id is required"),
    ("microsoft-atp-get-machine-alerts", {"machine_id": "ws1.contoso.com"}, "machine_id must be a machine ID"),
    ("microsoft-atp-get-file-alerts", {"file_hash": SHA256}, "Microsoft looks up the alerts of a file by SHA-1 only"),
    ("microsoft-atp-get-file-alerts", {"file_hash": "d41d8cd98f00b204e9800998ecf8427e"}, "by SHA-1 only"),
    ("microsoft-atp-get-file-alerts", {"file_hash": "not-a-hash"}, "file_hash must be a SHA-1 hash of 40"),
    ("microsoft-atp-get-ip-alerts", {"ip": "999.1.1.1"}, "ip must be an IPv4 or IPv6 address"),
    ("microsoft-atp-get-domain-alerts", {"domain": "https://evil.example/x"}, "domain must be a domain name"),
    ("microsoft-atp-get-user-alerts", {"username": " "}, "username is required"),
    ("microsoft-atp-list-investigations", {"limit": "-5"}, "limit must be at least 1"),
    ("microsoft-atp-start-investigation", {"machine_id": "abc", "comment": "c"}, "machine_id must be a machine ID"),
    ("microsoft-atp-start-investigation", {"machine_id": MACHINE_ID}, "comment is required"),
])
def test_invalid_arguments_fail_before_any_api_call(xsoar, requests_mock, command, args, message):
    run = xsoar.run(command, args=args)
    assert message in run.error
    assert api_calls(requests_mock) == []


# ---- the command table and the yml ------------------------------------------------------------------------


PERMISSIONS = {
    "microsoft-atp-list-alerts": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-get-alert-by-id": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-update-alert": {"Alert.ReadWrite.All"},
    "microsoft-atp-create-alert": {"Alert.ReadWrite.All"},
    "microsoft-atp-get-alert-related-user": {"User.Read.All"},
    "microsoft-atp-get-alert-related-files": {"File.Read.All"},
    "microsoft-atp-get-alert-related-ips": {"Ip.Read.All"},
    "microsoft-atp-get-alert-related-domains": {"URL.Read.All"},
    "microsoft-atp-get-machine-alerts": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-get-file-alerts": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-get-ip-alerts": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-get-domain-alerts": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-get-user-alerts": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-list-investigations": {"Alert.Read.All", "Alert.ReadWrite.All"},
    "microsoft-atp-start-investigation": {"Alert.ReadWrite.All"},
    "fetch-incidents": {"Alert.Read.All", "Alert.ReadWrite.All"},
}


def test_commands_declare_the_permissions_microsoft_documents():
    assert {name: set(mde.COMMANDS[name].roles) for name in PERMISSIONS} == PERMISSIONS


YML = yaml.safe_load((Path(__file__).resolve().parent.parent / "MicrosoftDefenderForEndpoint.yml").read_text())
DECLARED = {c["name"]: {o["contextPath"] for o in c.get("outputs") or []} for c in YML["script"]["commands"]}

# One run per command with every field Microsoft documents: what it produces must cover what the yml declares.
FULL_RUNS = [
    ("microsoft-atp-list-alerts", {"evidence": "true"}, "GET", "/alerts", {"value": [api_alert(evidence=EVIDENCE)]}),
    ("microsoft-atp-get-alert-by-id", {"alert_ids": ALERT_ID, "evidence": "true"}, "GET", f"/alerts/{ALERT_ID}",
     api_alert(evidence=EVIDENCE)),
    ("microsoft-atp-update-alert", {"alert_id": ALERT_ID, "status": "New"}, "PATCH", f"/alerts/{ALERT_ID}",
     api_alert()),
    ("microsoft-atp-create-alert", CREATE_ARGS, "POST", "/alerts/CreateAlertByReference", api_alert()),
    ("microsoft-atp-get-alert-related-user", {"id": ALERT_ID}, "GET", f"/alerts/{ALERT_ID}/user", API_USER),
    ("microsoft-atp-get-alert-related-files", {"id": ALERT_ID}, "GET", f"/alerts/{ALERT_ID}/files",
     {"value": [api_file(1)]}),
    ("microsoft-atp-get-alert-related-ips", {"id": ALERT_ID}, "GET", f"/alerts/{ALERT_ID}/ips",
     {"value": [{"id": "10.0.0.1"}]}),
    ("microsoft-atp-get-alert-related-domains", {"id": ALERT_ID}, "GET", f"/alerts/{ALERT_ID}/domains",
     {"value": [{"host": "a.example"}]}),
    ("microsoft-atp-get-machine-alerts", {"machine_id": MACHINE_ID}, "GET", f"/machines/{MACHINE_ID}/alerts",
     {"value": [api_alert()]}),
    ("microsoft-atp-get-file-alerts", {"file_hash": SHA1}, "GET", f"/files/{SHA1}/alerts", {"value": [api_alert()]}),
    ("microsoft-atp-get-ip-alerts", {"ip": "10.0.0.5"}, "GET", "/ips/10.0.0.5/alerts", {"value": [api_alert()]}),
    ("microsoft-atp-get-domain-alerts", {"domain": "a.example"}, "GET", "/domains/a.example/alerts",
     {"value": [api_alert()]}),
    ("microsoft-atp-get-user-alerts", {"username": "user1"}, "GET", "/users/user1/alerts", {"value": [api_alert()]}),
    ("microsoft-atp-list-investigations", {}, "GET", "/investigations", {"value": [API_INVESTIGATION]}),
    ("microsoft-atp-start-investigation", {"machine_id": MACHINE_ID, "comment": "c"}, "POST",
     f"/machines/{MACHINE_ID}/startInvestigation", API_INVESTIGATION),
]


@pytest.mark.parametrize("command, args, method, path, body", FULL_RUNS, ids=[run[0] for run in FULL_RUNS])
def test_every_declared_output_path_is_produced(xsoar, requests_mock, command, args, method, path, body):
    requests_mock.register_uri(method, f"{API}{path}", json=body)

    run = xsoar.run(command, args=args)

    assert DECLARED[command] - context_paths(run.context) == set()


def test_every_alerts_and_investigations_command_is_covered_above():
    assert {run[0] for run in FULL_RUNS} == set(PERMISSIONS) - {"fetch-incidents"}

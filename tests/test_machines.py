"""Machines: listing and finding machines, details, users, tags, and the standard endpoint command."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from conftest import API, mock_entra

MID = "4899036531e374137f63289c3267bad772c13fef"
MID2 = "9f4bc0e1d2a3b4c5d6e7f8091a2b3c4d5e6f7a8b"
SHA1 = "50ef7a4d5b2c4e2f8b9c0d1e2f3a4b5c6d7e8f90"
SHA1_B = "0123456789abcdef0123456789abcdef01234567"

MACHINE_KEY = "MicrosoftATP.Machine(val.ID && val.ID == obj.ID)"
ENDPOINT_KEY = "Endpoint(val.ID && val.ID == obj.ID && val.Vendor == obj.Vendor)"


def machine(machine_id: str = MID, **overrides) -> dict:
    """A machine as Microsoft returns it (fields from the API reference, plus extras seen in real responses)."""
    record = {
        "id": machine_id, "computerDnsName": "desktop-1.contoso.com", "firstSeen": "2024-01-02T03:04:05.1234567Z",
        "lastSeen": "2024-05-01T10:00:00Z", "osPlatform": "Windows10", "osVersion": None, "version": "22H2",
        "osProcessor": "x64", "osArchitecture": "64-bit", "osBuild": 19045, "lastIpAddress": "10.0.0.5",
        "lastExternalIpAddress": "52.1.2.3", "healthStatus": "Active", "onboardingStatus": "Onboarded",
        "rbacGroupId": 12, "rbacGroupName": "Workstations", "riskScore": "Medium", "exposureLevel": "Low",
        "deviceValue": "Normal", "isAadJoined": True, "aadDeviceId": "80fe8ff8-2624-418e-9591-41f0491218f9",
        "machineTags": ["vip"], "agentVersion": "10.8760.19045.4291", "defenderAvStatus": "Updated",
        "ipAddresses": [
            {"ipAddress": "192.168.1.9", "macAddress": "66778899AABB", "type": "Wireless80211",
             "operationalStatus": "Down"},
            {"ipAddress": "10.0.0.5", "macAddress": "001122334455", "type": "Ethernet", "operationalStatus": "Up"},
            {"ipAddress": "fe80::1", "macAddress": "001122334455", "type": "Ethernet", "operationalStatus": "Up"},
        ],
    }
    return {**record, **overrides}


def machine_context(machine_id: str = MID, **overrides) -> dict:
    """The MicrosoftATP.Machine context expected for `machine(machine_id)`."""
    context = {
        "ID": machine_id, "ComputerDNSName": "desktop-1.contoso.com", "FirstSeen": "2024-01-02T03:04:05.1234567Z",
        "LastSeen": "2024-05-01T10:00:00Z", "OSPlatform": "Windows10", "OSVersion": "22H2", "OSProcessor": "x64",
        "OSArchitecture": "64-bit", "OSBuild": 19045, "LastIPAddress": "10.0.0.5", "LastExternalIPAddress": "52.1.2.3",
        "HealthStatus": "Active", "OnboardingStatus": "Onboarded", "RBACGroupID": 12, "RBACGroupName": "Workstations",
        "RiskScore": "Medium", "ExposureLevel": "Low", "DeviceValue": "Normal", "IsAADJoined": True,
        "AADDeviceID": "80fe8ff8-2624-418e-9591-41f0491218f9", "MachineTags": ["vip"],
        "AgentVersion": "10.8760.19045.4291",
        "IPAddresses": [
            {"ipAddress": "192.168.1.9", "MACAddress": "66778899AABB", "type": "Wireless80211",
             "operationalStatus": "Down"},
            {"ipAddress": "10.0.0.5", "MACAddress": "001122334455", "type": "Ethernet", "operationalStatus": "Up"},
            {"ipAddress": "fe80::1", "MACAddress": "001122334455", "type": "Ethernet", "operationalStatus": "Up"},
        ],
        "NetworkInterfaces": [
            {"MACAddress": "66778899AABB", "IPAddresses": ["192.168.1.9"], "Type": "Wireless80211", "Status": "Down"},
            {"MACAddress": "001122334455", "IPAddresses": ["10.0.0.5", "fe80::1"], "Type": "Ethernet", "Status": "Up"},
        ],
    }
    return {**context, **overrides}


def endpoint_context(machine_id: str = MID, **overrides) -> dict:
    return {"ID": machine_id, "Hostname": "desktop-1.contoso.com", "IPAddress": "10.0.0.5", "OS": "Windows10",
            "OSVersion": "22H2 x64 bit", "Status": "Online", "MACAddress": "001122334455", "IsIsolated": False,
            "Vendor": "Microsoft Defender ATP", **overrides}


@pytest.fixture(autouse=True)
def no_isolation_history(requests_mock):
    """endpoint and get-machine-by-ip read the machines' isolate/unisolate history; by default there is none."""
    return requests_mock.get(f"{API}/machineactions", json={"value": []})


def query(request) -> dict[str, list[str]]:
    return parse_qs(urlparse(request.url).query)


def path(request) -> str:
    return unquote(urlparse(request.url).path)


def api_calls(requests_mock) -> list:
    return [r for r in requests_mock.request_history if r.url.startswith(API)]


@pytest.fixture(autouse=True)
def entra(requests_mock):
    return mock_entra(requests_mock)


# ---- get-machines ------------------------------------------------------------------------------


def test_get_machines_returns_the_first_page_by_default(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": [machine()]})

    run = xsoar.run("microsoft-atp-get-machines", args={"page_size": "50", "page_num": "1"})

    assert api.call_count == 1
    assert query(api.last_request) == {"$top": ["50"], "$skip": ["0"]}
    assert run.context == {MACHINE_KEY: [machine_context()]}
    assert "|ID|ComputerDNSName|OSPlatform|LastIPAddress|" in run.entry["HumanReadable"]
    assert run.entry["Contents"] == [machine()]


def test_get_machines_builds_one_filter_from_every_argument(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": []})

    run = xsoar.run("microsoft-atp-get-machines", args={
        "hostname": "desktop-1,laptop", "ip": "10.0.0.5", "risk_score": "high,Medium", "health_status": "active",
        "os_platform": "Windows11", "ran_once_flag": "true"})

    assert query(api.last_request)["$filter"] == [
        "(startswith(computerDnsName,'desktop-1') or startswith(computerDnsName,'laptop')) and "
        "lastIpAddress eq '10.0.0.5' and riskScore in ('High', 'Medium') and healthStatus eq 'Active' and "
        "osPlatform eq 'Windows11'"]
    assert run.context == {}
    assert "No entries" in run.entry["HumanReadable"]


def test_get_machines_escapes_quotes_in_hostnames(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": []})

    xsoar.run("microsoft-atp-get-machines", args={"hostname": "o'brien-pc"})

    assert query(api.last_request)["$filter"] == ["startswith(computerDnsName,'o''brien-pc')"]


def test_get_machines_page_num_skips_whole_pages(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": [machine()]})

    xsoar.run("microsoft-atp-get-machines", args={"page_size": "100", "page_num": "3"})

    assert query(api.last_request) == {"$top": ["100"], "$skip": ["200"]}


def inventory(total: int):
    """A requests-mock callback serving `total` machines with $top/$skip, as Microsoft does."""
    def respond(request, context):
        params = query(request)
        top, skip = int(params["$top"][0]), int(params["$skip"][0])
        return {"value": [{"id": f"{i:040x}"} for i in range(skip, min(skip + top, total))]}
    return respond


def test_get_machines_all_results_walks_25000_machines_in_3_requests(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json=inventory(25_000))

    run = xsoar.run("microsoft-atp-get-machines", args={"all_results": "true", "page_size": "50", "limit": "7"})

    assert [query(r) for r in api.request_history] == [
        {"$top": ["10000"], "$skip": ["0"]}, {"$top": ["10000"], "$skip": ["10000"]},
        {"$top": ["10000"], "$skip": ["20000"]}]
    machines = run.context[MACHINE_KEY]
    assert len(machines) == 25_000
    assert machines[-1] == {"ID": f"{24_999:040x}"}


def test_get_machines_limit_pages_past_10000(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json=inventory(25_000))

    run = xsoar.run("microsoft-atp-get-machines", args={"limit": "12000", "page_num": "4"})

    assert [query(r) for r in api.request_history] == [
        {"$top": ["10000"], "$skip": ["0"]}, {"$top": ["2000"], "$skip": ["10000"]}]
    assert len(run.context[MACHINE_KEY]) == 12_000


@pytest.mark.parametrize("args, message", [
    ({"page_size": "0"}, "page_size must be at least 1"),
    ({"page_size": "10001"}, "page_size must be at most 10000"),
    ({"page_num": "0"}, "page_num must be at least 1"),
    ({"limit": "ten"}, "limit must be a whole number"),
    ({"all_results": "maybe"}, "all_results must be true or false"),
    ({"risk_score": "Extreme"}, "risk_score must be one of"),
    ({"health_status": "Sleeping"}, "health_status must be one of"),
    ({"ip": "10.0.0.300"}, "ip must be an IPv4 or IPv6 address"),
])
def test_get_machines_rejects_bad_arguments_before_any_call(xsoar, requests_mock, args, message):
    run = xsoar.run("microsoft-atp-get-machines", args=args)

    assert message in run.error
    assert requests_mock.call_count == 0


def test_get_machines_reports_microsoft_errors(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines", status_code=400,
                      json={"error": {"code": "ODataError", "message": "Invalid filter", "target": "abc-123"}})

    run = xsoar.run("microsoft-atp-get-machines", args={"os_platform": "Windows10"})

    assert "HTTP 400 ODataError: Invalid filter" in run.error
    assert "abc-123" in run.error


# ---- get-machine-details -------------------------------------------------------------------------


def test_get_machine_details_reads_each_machine(xsoar, requests_mock):
    first = requests_mock.get(f"{API}/machines/{MID}", json=machine())
    second = requests_mock.get(f"{API}/machines/{MID2}", json=machine(MID2, computerDnsName="server-2"))

    run = xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": f"{MID.upper()}, {MID2}"})

    assert first.call_count == second.call_count == 1
    assert run.context == {MACHINE_KEY: [machine_context(), machine_context(MID2, ComputerDNSName="server-2")]}


def test_get_machine_details_keeps_the_machines_it_found(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", json=machine())
    requests_mock.get(f"{API}/machines/{MID2}", status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": f"Machine {MID2} was not found"}})

    run = xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": [MID, MID2]})

    assert run.context == {MACHINE_KEY: [machine_context()]}
    readable = run.entry["HumanReadable"]
    assert "### Failed" in readable
    assert (f"|{MID2}|GET /machines/{MID2} failed with HTTP 404 ResourceNotFound: Machine {MID2} was not found. "
            "The object was not found.|") in readable


def test_get_machine_details_fails_when_every_machine_fails(xsoar, requests_mock):
    requests_mock.get(re.compile(f"{API}/machines/.*"), status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": "not found"}})

    run = xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": f"{MID},{MID2}"})

    assert MID in run.error and MID2 in run.error
    assert "failed for every item" in run.error


@pytest.mark.parametrize("machine_id", ["desktop-1", MID[:-1], MID + "0", "g" * 40, "..", "a/b"])
def test_an_invalid_machine_id_fails_alone_and_the_valid_one_is_still_read(xsoar, requests_mock, machine_id):
    valid = requests_mock.get(f"{API}/machines/{MID}", json=machine())
    run = xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": f"{MID},{machine_id}"})

    assert valid.call_count == 1
    assert run.context["MicrosoftATP.Machine(val.ID && val.ID == obj.ID)"][0]["ID"] == MID
    failed_row = next(line for line in run.entry["HumanReadable"].splitlines()
                      if line.startswith(f"|{machine_id.lower()}|"))
    assert "machine_id must be a machine ID" in failed_row
    assert [r.url for r in requests_mock.request_history if "/api/" in r.url] == [f"{API}/machines/{MID}"]


def test_machine_details_without_any_id_fails_before_any_request(xsoar, requests_mock):
    assert "machine_id is required" in xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": ""}).error
    assert requests_mock.call_count == 0


# ---- get-machine-by-ip -------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_get_machine_by_ip_calls_findbyip_and_fills_endpoint(xsoar, requests_mock):
    when = iso(xsoar.clock.utcnow() - timedelta(days=2))
    api = requests_mock.get(re.compile(f"{API}/machines/findbyip.*"), json={"value": [
        machine(), machine(MID2, healthStatus="Inactive", ipAddresses=[], version=None, osVersion="10.0.19045")]})

    run = xsoar.run("microsoft-atp-get-machine-by-ip", args={"ip": "10.0.0.5", "timestamp": when})

    assert path(api.last_request) == f"/api/machines/findbyip(ip='10.0.0.5',timestamp={when})"
    second = machine_context(MID2, HealthStatus="Inactive", IPAddresses=[], OSVersion="10.0.19045")
    del second["NetworkInterfaces"]
    second_endpoint = endpoint_context(MID2, Status="Offline", OSVersion="10.0.19045 x64 bit")
    del second_endpoint["MACAddress"]
    assert run.context == {MACHINE_KEY: [machine_context(), second],
                           ENDPOINT_KEY: [endpoint_context(), second_endpoint]}


def test_get_machine_by_ip_applies_limit_unless_all_results(xsoar, requests_mock):
    when = iso(xsoar.clock.utcnow() - timedelta(hours=1))
    requests_mock.get(re.compile(f"{API}/machines/findbyip.*"),
                      json={"value": [machine(f"{i:040x}") for i in range(3)]})

    limited = xsoar.run("microsoft-atp-get-machine-by-ip", args={"ip": "10.0.0.5", "timestamp": when, "limit": "2"})
    everything = xsoar.run("microsoft-atp-get-machine-by-ip", args={"ip": "10.0.0.5", "timestamp": when,
                                                                     "limit": "2", "all_results": "true"})

    assert [m["ID"] for m in limited.context[MACHINE_KEY]] == [f"{i:040x}" for i in range(2)]
    assert len(everything.context[MACHINE_KEY]) == 3


def test_get_machine_by_ip_accepts_relative_time(xsoar, requests_mock):
    api = requests_mock.get(re.compile(f"{API}/machines/findbyip.*"), json={"value": []})

    xsoar.run("microsoft-atp-get-machine-by-ip", args={"ip": "2001:db8::1", "timestamp": "3 days"})

    sent = re.fullmatch(r"/api/machines/findbyip\(ip='2001:db8::1',timestamp=(.+)\)", path(api.last_request))
    sent_time = datetime.fromisoformat(sent.group(1).replace("Z", "+00:00"))
    assert sent_time == xsoar.clock.utcnow() - timedelta(days=3)


@pytest.mark.parametrize("args, message", [
    ({"ip": "not-an-ip", "timestamp": "1 day"}, "ip must be an IPv4 or IPv6 address"),
    ({"ip": "10.0.0.5", "timestamp": "yesterday-ish"}, "timestamp must be an ISO 8601 time"),
    ({"ip": "10.0.0.5", "timestamp": "31 days"}, "timestamp must be within the last 30 days"),
    ({"ip": "10.0.0.5", "timestamp": "2999-01-01T00:00:00Z"}, "timestamp must be within the last 30 days"),
    ({"ip": "10.0.0.5"}, "timestamp is required"),
    ({"ip": "10.0.0.5", "timestamp": "1 day", "limit": "0"}, "limit must be at least 1"),
])
def test_get_machine_by_ip_validates_before_calling(xsoar, requests_mock, args, message):
    run = xsoar.run("microsoft-atp-get-machine-by-ip", args=args)

    assert message in run.error
    assert requests_mock.call_count == 0


# ---- endpoint --------------------------------------------------------------------------------------


def test_endpoint_matches_any_id_ip_or_hostname(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": [machine()]})

    run = xsoar.run("endpoint", args={"id": f"{MID},{MID2}", "ip": "10.0.0.5", "hostname": "desktop-1,o'brien"})

    assert query(api.last_request)["$filter"] == [
        f"(id in ('{MID}', '{MID2}')) or (lastIpAddress eq '10.0.0.5') or "
        "(computerDnsName in ('desktop-1', 'o''brien')) or "
        "((startswith(computerDnsName,'desktop-1.') or startswith(computerDnsName,'o''brien.')))"]
    assert run.context == {MACHINE_KEY: [machine_context()], ENDPOINT_KEY: [endpoint_context()]}


def test_endpoint_with_one_hostname(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": []})

    run = xsoar.run("endpoint", args={"hostname": "desktop-1"})

    assert query(api.last_request)["$filter"] == [
        "(computerDnsName eq 'desktop-1') or (startswith(computerDnsName,'desktop-1.'))"]
    assert run.context == {}


def test_endpoint_reads_isolation_from_the_newest_succeeded_action(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines", json={"value": [machine(), machine(MID2)]})
    history = requests_mock.get(f"{API}/machineactions", json={"value": [
        {"id": "a2", "machineId": MID, "type": "Unisolate", "status": "Succeeded",
         "creationDateTimeUtc": "2024-05-02T10:00:00Z"},
        {"id": "a1", "machineId": MID, "type": "Isolate", "status": "Succeeded",
         "creationDateTimeUtc": "2024-05-01T10:00:00Z"},
        {"id": "a3", "machineId": MID2, "type": "Isolate", "status": "Succeeded",
         "creationDateTimeUtc": "2024-05-03T10:00:00Z"},
    ]})

    run = xsoar.run("endpoint", args={"id": f"{MID},{MID2}"})

    assert query(history.last_request)["$filter"] == [
        f"machineId in ('{MID}', '{MID2}') and type in ('Isolate', 'Unisolate') and status eq 'Succeeded'"]
    assert [e["IsIsolated"] for e in run.context[ENDPOINT_KEY]] == [False, True]


def test_endpoint_without_action_history_access_leaves_isolation_out(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines", json={"value": [machine()]})
    requests_mock.get(f"{API}/machineactions", status_code=403, json={"error": {"code": "Forbidden", "message": "no"}})

    run = xsoar.run("endpoint", args={"id": MID})

    assert "IsIsolated" not in run.context[ENDPOINT_KEY][0]


def test_endpoint_with_only_an_id(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machines", json={"value": [machine(healthStatus="Inactive")]})

    run = xsoar.run("endpoint", args={"id": MID})

    assert query(api.last_request)["$filter"] == [f"id eq '{MID}'"]
    assert run.context[ENDPOINT_KEY] == [endpoint_context(Status="Offline")]


HEALTH_STATUS_CASES = [
    ("Active", "Online"), ("Inactive", "Offline"), ("ImpairedCommunication", "Online"),
    ("NoSensorData", "Online"), ("NoSensorDataImpairedCommunication", "Online"),
    ("Unknown", None), (None, None), ("SomethingNew", None),
]


@pytest.mark.parametrize("health_status, status", HEALTH_STATUS_CASES)
def test_endpoint_status_follows_the_originals_health_status_mapping(xsoar, requests_mock, health_status, status):
    requests_mock.get(f"{API}/machines", json={"value": [machine(healthStatus=health_status)]})

    endpoint = xsoar.run("endpoint", args={"id": MID}).context[ENDPOINT_KEY][0]

    assert endpoint.get("Status") == status
    assert ("Status" in endpoint) is (status is not None)


def test_every_health_status_microsoft_documents_has_a_case_above():
    import MicrosoftDefenderForEndpoint as mde

    assert set(mde.HEALTH_STATUSES) <= {health for health, _ in HEALTH_STATUS_CASES}


@pytest.mark.parametrize("fields, os_version", [
    ({"osVersion": None, "version": "22H2", "osProcessor": "x64"}, "22H2 x64 bit"),
    ({"osVersion": "10.0.19045.4291", "version": "22H2", "osProcessor": "x86"}, "10.0.19045.4291 x86 bit"),
    ({"osVersion": None, "version": "22H2", "osProcessor": None}, "22H2"),
    ({"osVersion": None, "version": None, "osProcessor": "x64"}, None),
])
def test_endpoint_os_version_is_formatted_as_the_original_does(xsoar, requests_mock, fields, os_version):
    requests_mock.get(f"{API}/machines", json={"value": [machine(**fields)]})

    endpoint = xsoar.run("endpoint", args={"id": MID}).context[ENDPOINT_KEY][0]

    assert endpoint.get("OSVersion") == os_version


def test_endpoint_mac_address_is_the_one_of_the_last_ip_and_absent_when_no_interface_has_it(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines", json={"value": [
        machine(lastIpAddress="192.168.1.9"), machine(MID2, lastIpAddress="172.16.0.1")]})

    first, second = xsoar.run("endpoint", args={"id": f"{MID},{MID2}"}).context[ENDPOINT_KEY]

    assert first["MACAddress"] == "66778899AABB"
    assert "MACAddress" not in second


@pytest.mark.parametrize("args, message", [
    ({}, "at least one of id, ip or hostname"),
    ({"id": "desktop-1"}, "id must be a machine ID"),
    ({"ip": "1.2.3"}, "ip must be an IPv4 or IPv6 address"),
])
def test_endpoint_validates_arguments(xsoar, requests_mock, args, message):
    run = xsoar.run("endpoint", args=args)

    assert message in run.error
    assert requests_mock.call_count == 0


# ---- get-machine-users -----------------------------------------------------------------------------

USER = {"id": "contoso\\jdoe", "accountName": "jdoe", "accountDomain": "contoso", "accountSid": "S-1-5-21-1",
        "firstSeen": "2024-01-01T00:00:00Z", "lastSeen": "2024-05-01T00:00:00Z", "logonTypes": "Interactive",
        "logOnMachinesCount": 2, "isDomainAdmin": False, "isOnlyNetworkUser": False}
USER_CONTEXT = {"ID": "contoso\\jdoe", "AccountName": "jdoe", "AccountDomain": "contoso", "AccountSID": "S-1-5-21-1",
                "FirstSeen": "2024-01-01T00:00:00Z", "LastSeen": "2024-05-01T00:00:00Z", "LogonTypes": "Interactive",
                "LogonCount": 2, "DomainAdmin": False, "NetworkUser": False}
USER_KEY = "MicrosoftATP.MachineUser(val.ID && val.ID == obj.ID && val.MachineID == obj.MachineID)"


def test_get_machine_users_lists_logon_users_per_machine(xsoar, requests_mock):
    first = requests_mock.get(f"{API}/machines/{MID}/logonusers", json={"value": [USER]})
    second = requests_mock.get(f"{API}/machines/{MID2}/logonusers", json={"value": [USER]})

    run = xsoar.run("microsoft-atp-get-machine-users", args={"machine_id": f"{MID},{MID2}"})

    assert first.call_count == second.call_count == 1
    assert run.context == {USER_KEY: [{**USER_CONTEXT, "MachineID": MID}, {**USER_CONTEXT, "MachineID": MID2}]}
    assert "|contoso\\jdoe|jdoe|contoso|" in run.entry["HumanReadable"]


def test_get_machine_users_reports_a_failed_machine(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}/logonusers", json={"value": []})
    requests_mock.get(f"{API}/machines/{MID2}/logonusers", status_code=403,
                      json={"error": {"code": "Forbidden", "message": "Machine is outside your device groups"}})

    run = xsoar.run("microsoft-atp-get-machine-users", args={"machine_id": f"{MID},{MID2}"})

    assert run.context == {}
    assert "Machine is outside your device groups" in run.entry["HumanReadable"]


# ---- add-remove-machine-tag ---------------------------------------------------------------------


@pytest.mark.parametrize("action, sent", [("Add", "Add"), ("remove", "Remove")])
def test_add_remove_machine_tag_posts_value_and_action(xsoar, requests_mock, action, sent):
    api = requests_mock.post(f"{API}/machines/{MID}/tags", json=machine(machineTags=["vip", "o'neil"]))

    run = xsoar.run("microsoft-atp-add-remove-machine-tag", args={"machine_id": MID, "action": action,
                                                                  "tag": "o'neil"})

    assert api.last_request.json() == {"Value": "o'neil", "Action": sent}
    assert run.context == {MACHINE_KEY: [machine_context(MachineTags=["vip", "o'neil"])]}


@pytest.mark.parametrize("args, message", [
    ({"machine_id": MID, "action": "Toggle", "tag": "x"}, "action must be one of Add, Remove"),
    ({"machine_id": MID, "tag": "x"}, "action is required"),
    ({"machine_id": MID, "action": "Add"}, "tag is required"),
    ({"machine_id": "host", "action": "Add", "tag": "x"}, "machine_id must be a machine ID"),
])
def test_add_remove_machine_tag_validates(xsoar, requests_mock, args, message):
    assert message in xsoar.run("microsoft-atp-add-remove-machine-tag", args=args).error
    assert requests_mock.call_count == 0


# ---- file, domain and user machines -------------------------------------------------------------------


def test_get_file_related_machines_per_hash(xsoar, requests_mock):
    first = requests_mock.get(f"{API}/files/{SHA1}/machines", json={"value": [machine()]})
    second = requests_mock.get(f"{API}/files/{SHA1_B}/machines", json={"value": []})

    run = xsoar.run("microsoft-atp-get-file-related-machines", args={"file_hash": f"{SHA1.upper()},{SHA1_B}"})

    assert first.call_count == second.call_count == 1
    assert run.context == {
        "MicrosoftATP.FileMachine(val.File && val.File == obj.File)": [
            {"File": SHA1, "Machines": [machine_context()]}, {"File": SHA1_B, "Machines": []}],
        MACHINE_KEY: [machine_context()],
    }
    assert f"|{SHA1}|{MID}|desktop-1.contoso.com|" in run.entry["HumanReadable"]


@pytest.mark.parametrize("file_hash", ["a" * 64, "a" * 32, "not-a-hash", ""])
def test_get_file_related_machines_needs_sha1(xsoar, requests_mock, file_hash):
    assert "file_hash" in xsoar.run("microsoft-atp-get-file-related-machines", args={"file_hash": file_hash}).error
    assert requests_mock.call_count == 0


def test_get_domain_machines(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/domains/contoso.com/machines", json={"value": [machine()]})

    run = xsoar.run("microsoft-atp-get-domain-machines", args={"domain": "contoso.com"})

    assert api.call_count == 1
    assert run.context == {"MicrosoftATP.DomainMachine(val.Domain && val.Domain == obj.Domain)": {
        "Domain": "contoso.com", "Machines": [machine_context()]}}


@pytest.mark.parametrize("domain", ["https://contoso.com/x", "conto so.com", "a/b"])
def test_get_domain_machines_validates_the_domain(xsoar, requests_mock, domain):
    assert "domain must be a domain name" in xsoar.run("microsoft-atp-get-domain-machines",
                                                       args={"domain": domain}).error
    assert requests_mock.call_count == 0


@pytest.mark.parametrize("username", ["jdoe", "CONTOSO\\jdoe"])
def test_get_user_machines_uses_the_account_name(xsoar, requests_mock, username):
    api = requests_mock.get(f"{API}/users/jdoe/machines", json={"value": [machine()]})

    run = xsoar.run("microsoft-atp-get-user-machines", args={"username": username})

    assert api.call_count == 1
    assert run.context == {"MicrosoftATP.UserMachine(val.Username && val.Username == obj.Username)": {
        "Username": username, "Machines": [machine_context()]}}


def test_get_user_machines_rejects_a_upn(xsoar, requests_mock):
    assert "not a UPN" in xsoar.run("microsoft-atp-get-user-machines", args={"username": "jdoe@contoso.com"}).error
    assert requests_mock.call_count == 0


def test_list_auth_permissions_names_the_machine_permissions(xsoar, requests_mock):
    from conftest import make_jwt

    mock_entra(requests_mock, token=make_jwt({"roles": ["Machine.Read.All", "Machine.Isolate"]}))

    readable = xsoar.run("microsoft-atp-list-auth-permissions").entry["HumanReadable"]

    assert "|Machine.Scan|microsoft-atp-run-antivirus-scan|" in readable
    assert "microsoft-atp-get-machines" not in readable.split("Missing permissions")[1]
    assert "microsoft-atp-isolate-machine" not in readable.split("Missing permissions")[1]

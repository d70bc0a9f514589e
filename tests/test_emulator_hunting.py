"""The emulator's advanced hunting: Graph runHuntingQuery and Defender advancedqueries/run over seeded Device*
tables, with Graph-audience tokens from every flow, KQL errors as 400s, and the quota/timeout/size faults."""

from __future__ import annotations

import base64
import datetime as dt
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_emulator import _token as client_credentials_token

from mde_emulator.hunting_data import TABLES
from mde_emulator.server import EmulatorServer, Options

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MDE_SCOPE = "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"
RESET = {"hunting_quota": None, "hunting_slow_queries": 0, "hunting_max_rows": 100_000}


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(Options(seed=5, machines=60, alerts=80)) as srv:
        yield srv


@pytest.fixture
def info(server):
    yield server.info
    requests.post(f"{server.base_url}/admin/faults", json=RESET, verify=str(server.ca_path), timeout=10)


def token(info, client="full", scope=GRAPH_SCOPE) -> str:
    return client_credentials_token(info, client, scope)


def graph(info, query, timespan=None, bearer=None, client="full"):
    body = {"Query": query} if timespan is None else {"Query": query, "Timespan": timespan}
    return requests.post(f"{info['base_url']}/v1.0/security/runHuntingQuery", json=body, timeout=60,
                         headers={"Authorization": f"Bearer {bearer or token(info, client)}"},
                         verify=info["ca_bundle"])


def defender(info, query, client="full"):
    return requests.post(f"{info['api_url']}/api/advancedqueries/run", json={"Query": query}, timeout=60,
                         headers={"Authorization": f"Bearer {token(info, client, MDE_SCOPE)}"},
                         verify=info["ca_bundle"])


def set_faults(info, **faults):
    r = requests.post(f"{info['admin_url']}/faults", json=faults, verify=info["ca_bundle"], timeout=10)
    assert r.status_code == 200, r.text


def claims(access_token: str) -> dict:
    return jwt.decode(access_token, options={"verify_signature": False})


# -- shapes ------------------------------------------------------------------------------------------------------
def test_graph_answers_lower_case_schema_and_results(info):
    r = graph(info, "DeviceProcessEvents | project Timestamp, DeviceName, ProcessId, FileName | take 3")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith("/v1.0/$metadata#microsoft.graph.security.huntingQueryResults")
    assert body["schema"] == [{"name": "Timestamp", "type": "DateTime"}, {"name": "DeviceName", "type": "String"},
                              {"name": "ProcessId", "type": "Int64"}, {"name": "FileName", "type": "String"}]
    assert len(body["results"]) == 3
    row = body["results"][0]
    assert row["Timestamp"].endswith("Z") and len(row["Timestamp"].split(".")[1]) == 8  # 7 digits + Z
    assert isinstance(row["ProcessId"], int)


def test_defender_answers_pascal_case_schema_and_results(info):
    r = defender(info, "DeviceInfo | where OSPlatform startswith 'Windows' | project DeviceId, IsAzureADJoined, "
                       "OSBuild | take 2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["Schema"] == [{"Name": "DeviceId", "Type": "String"}, {"Name": "IsAzureADJoined", "Type": "Boolean"},
                              {"Name": "OSBuild", "Type": "Int64"}]
    assert len(body["Results"]) == 2 and isinstance(body["Results"][0]["IsAzureADJoined"], bool)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_table_has_microsofts_columns(info, table):
    body = graph(info, f"{table} | take 1").json()
    assert [c["name"] for c in body["schema"]] == [name for name, _ in TABLES[table]]
    assert body["results"], f"{table} has no rows"


def test_dynamic_aggregates_arrive_as_json_arrays(info):
    r = graph(info, "DeviceProcessEvents | summarize Lines = make_set(ProcessCommandLine) by DeviceId | take 1")
    assert r.json()["schema"][1] == {"name": "Lines", "type": "Object"}
    assert isinstance(r.json()["results"][0]["Lines"], list)


# -- consistency with the rest of the emulator --------------------------------------------------------------------
def test_device_info_lists_every_machine_the_api_serves(info, server):
    ids = {row["DeviceId"] for row in graph(info, "DeviceInfo | distinct DeviceId").json()["results"]}
    assert ids == {m["id"] for m in server.emulator.store.machines}


def test_alert_evidence_files_appear_as_events_on_the_alerts_machine(info, server):
    store = server.emulator.store
    alert, evidence = next((a, e) for a in reversed(store.alerts) for e in store.evidence[a["id"]]
                           if e["entityType"] == "Process")
    query = (f'DeviceProcessEvents | where SHA1 == "{evidence["sha1"]}" and DeviceId == "{alert["machineId"]}" '
             "| project FileName, ProcessCommandLine")
    rows = graph(info, query).json()["results"]
    assert {"FileName": evidence["fileName"], "ProcessCommandLine": evidence["processCommandLine"]} in rows


# -- every template purpose has something to find (the plugin's e2e tests run the real templates) -------------
@pytest.mark.parametrize("query", [
    'DeviceNetworkEvents | where RemotePort == 445 and InitiatingProcessId !in (0, 4)',
    'DeviceProcessEvents | where ProcessCommandLine has "lsass.exe" and ProcessCommandLine has "-accepteula"',
    'DeviceEvents | where ActionType == "ScheduledTaskCreated" and InitiatingProcessAccountSid != "S-1-5-18"',
    r'DeviceFileEvents | where FolderPath contains @"\Start Menu\Programs\Startup\" and ActionType == "FileCreated"',
    r'DeviceRegistryEvents | where RegistryKey contains @"HKEY_LOCAL_MACHINE\SYSTEM\ControlSet001\Services\"',
    r'DeviceRegistryEvents | where RegistryKey contains @"SharedAccess\Parameters\FirewallPolicy"',
    r'DeviceFileEvents | where FolderPath contains @"C:\Windows\System32\drivers\etc\hosts"',
    r'DeviceFileEvents | where FolderPath contains @"C:\Program Files" and ActionType == "FileModified"',
    'DeviceEvents | where ActionType in ("UserAccountCreated", "SecurityGroupCreated")',
    'DeviceEvents | where ActionType == "UserAccountAddedToLocalGroup"',
    'DeviceFileEvents | where isnotempty(FileOriginUrl)',
    'DeviceProcessEvents | distinct SHA1 | join kind=inner (DeviceFileCertificateInfo) on SHA1',
    'DeviceProcessEvents | where FileName in~ ("powershell.exe") and InitiatingProcessSignatureStatus != "Valid"',
    'DeviceProcessEvents | where ProcessCommandLine contains "-encoded"',
    'DeviceNetworkEvents | where not(RemoteIP matches regex @"^(10\\.|172\\.(1[6-9]|2[0-9]|3[01])\\.|192\\.168\\.)")',
    'DeviceNetworkEvents | where RemotePort == 53 | extend Packetinfo = url_decode(AdditionalFields)',
    'DeviceLogonEvents | where IsLocalAdmin == true | where AccountDomain =~ tostring(split(DeviceName, ".")[0])',
    'DeviceProcessEvents | where InitiatingProcessFileName in~ ("sc.exe", "taskkill.exe") '
    '| where InitiatingProcessCommandLine has_any ("stop", "config", "/IM")',
    'DeviceProcessEvents | where ProcessCommandLine has "WEVTUTIL" and ProcessCommandLine has_any ("CL", "clear-log")',
    'DeviceFileEvents | where ActionType == "FileDeleted"',
])
def test_seeded_scenarios_match_the_template_conditions(info, query):
    r = graph(info, query + " | take 1")
    assert r.status_code == 200, r.text
    assert r.json()["results"], query


def test_a_machine_user_is_found_across_tables(info, server):
    store = server.emulator.store
    machine = next(m for m in store.machines if m["osPlatform"].startswith("Windows"))
    user = store.machine_users[machine["id"]][0]
    rows = graph(info, f'union Device* | where AccountName has_any ("{user}") | distinct DeviceName').json()["results"]
    assert {"DeviceName": machine["computerDnsName"]} in rows


# -- time window ---------------------------------------------------------------------------------------------------
def test_timespan_narrows_the_window(info):
    def count(timespan):
        r = graph(info, "DeviceProcessEvents | count", timespan)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["Count"]

    everything, day = count(None), count("P1D")
    assert 0 < day < everything
    now = dt.datetime.now(dt.timezone.utc)
    start = (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (now + dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert count(f"{start}/{end}") == day or abs(count(f"{start}/{end}") - day) <= 1
    assert count(f"PT24H/{end}") == count(f"{start}/{end}")


def test_invalid_timespan_is_a_bad_request(info):
    r = graph(info, "DeviceInfo | take 1", "last week")
    assert r.status_code == 400 and "Timespan" in r.json()["error"]["message"]


# -- bad queries ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("query", "words"), [
    ("DeviceInfo | wherex", "Fix syntax errors in your query"),
    ("NoSuchTable | take 1", "Failed to resolve table or column expression named 'NoSuchTable'"),
    ("DeviceInfo | project NoSuchColumn", "Failed to resolve scalar expression named 'NoSuchColumn'"),
    ("externaldata(x:string)[@'/etc/passwd'] with (format='txt')", "Query could not be run"),
    (".set-or-replace DeviceInfo <| DeviceLogonEvents", "Query could not be run"),
])
def test_bad_queries_are_400_with_the_parsers_message(info, query, words):
    for r, shape in ((graph(info, query), "innerError"), (defender(info, query), "target")):
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "BadRequest" and words in error["message"] and shape in error


def test_an_empty_query_is_refused_by_both(info):
    assert "empty" in graph(info, " ").json()["error"]["message"]
    assert defender(info, "").json()["error"]["code"] == "MissingRequiredParameter"


def test_defender_body_names_are_case_sensitive(info):
    r = requests.post(f"{info['api_url']}/api/advancedqueries/run", json={"query": "DeviceInfo"}, timeout=30,
                      headers={"Authorization": f"Bearer {token(info, scope=MDE_SCOPE)}"}, verify=info["ca_bundle"])
    assert r.status_code == 400 and "case-sensitive" in r.json()["error"]["message"]


# -- tokens and permissions ---------------------------------------------------------------------------------------
def test_each_api_accepts_only_its_own_audience(info):
    r = graph(info, "DeviceInfo | take 1", bearer=token(info, scope=MDE_SCOPE))
    assert r.status_code == 401 and "audience" in r.json()["error"]["message"]
    assert "innerError" in r.json()["error"]
    r = requests.post(f"{info['api_url']}/api/advancedqueries/run", json={"Query": "DeviceInfo"}, timeout=30,
                      headers={"Authorization": f"Bearer {token(info)}"}, verify=info["ca_bundle"])
    assert r.status_code == 401


def test_graph_needs_threat_hunting_permission(info):
    assert claims(token(info, "defender-hunting"))["roles"] == []
    r = graph(info, "DeviceInfo | take 1", client="defender-hunting")
    assert r.status_code == 403 and "ThreatHunting.Read.All" in r.json()["error"]["message"]
    assert defender(info, "DeviceInfo | take 1", client="defender-hunting").status_code == 200
    assert defender(info, "DeviceInfo | take 1", client="limited").status_code == 403


def test_graph_tokens_from_every_flow(info):
    assert claims(token(info))["roles"] == ["ThreatHunting.Read.All"]
    assert "ThreatHunting.Read.All" not in claims(token(info, scope=MDE_SCOPE))["roles"]
    # oproxy: scope "graph"
    plaintext = f"{int(time.time())}:{info['oproxy']['token']}".encode()
    nonce = b"\x01" * 12
    sealed = AESGCM(base64.b64decode(info["oproxy"]["key"])).encrypt(nonce, plaintext, None)
    r = requests.post(info["oproxy_url"], verify=info["ca_bundle"], timeout=10,
                      json={"app_name": "ms-defender-atp", "registration_id": info["oproxy"]["registration_id"],
                            "encrypted_token": base64.b64encode(nonce + sealed).decode(), "scope": "graph",
                            "resource": ""})
    oproxy = r.json()["access_token"]
    assert claims(oproxy)["aud"] == "https://graph.microsoft.com"
    assert graph(info, "DeviceInfo | take 1", bearer=oproxy).status_code == 200
    # managed identity: resource
    r = requests.get(f"{info['imds_url']}/metadata/identity/oauth2/token", headers={"Metadata": "true"},
                     params={"api-version": "2018-02-01", "resource": "https://graph.microsoft.com"},
                     verify=info["ca_bundle"], timeout=10)
    assert graph(info, "DeviceInfo | take 1", bearer=r.json()["access_token"]).status_code == 200


# -- faults ----------------------------------------------------------------------------------------------------------
def test_call_quota_and_cpu_quota_are_told_apart_by_the_body(info):
    set_faults(info, hunting_quota={"kind": "calls", "count": 1, "retry_after": 7})
    r = graph(info, "DeviceInfo | take 1")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert "API calls quota exceeded" in r.json()["error"]["message"]
    assert graph(info, "DeviceInfo | take 1").status_code == 200  # the quota was spent on one call
    set_faults(info, hunting_quota={"kind": "cpu", "count": 2})
    r = defender(info, "DeviceInfo | take 1")
    assert r.status_code == 429
    assert r.json()["error"]["message"] == ("You have exceeded processing resources allocated to this tenant. You can "
                                            "run queries again in 00:14:12.")


def test_slow_query_times_out_and_size_limit_errors(info):
    set_faults(info, hunting_slow_queries=1)
    r = graph(info, "DeviceInfo")
    assert r.status_code == 400 and r.json()["error"]["message"] == "Query exceeded the timeout period."
    set_faults(info, hunting_max_rows=5)
    assert graph(info, "DeviceInfo | take 5").status_code == 200
    assert "Result size limit exceeded" in graph(info, "DeviceInfo").json()["error"]["message"]
    assert "exceeded the allowed result size" in defender(info, "DeviceInfo").json()["error"]["message"]


def test_bad_fault_values_are_refused(info):
    r = requests.post(f"{info['admin_url']}/faults", json={"hunting_quota": {"kind": "memory"}},
                      verify=info["ca_bundle"], timeout=10)
    assert r.status_code == 400 and "calls" in r.json()["error"]


def test_the_window_follows_the_emulator_clock(info):
    """Last in this module: the clock only moves forward."""
    def last_day():
        return graph(info, "DeviceProcessEvents | where Timestamp > ago(1d) | count").json()["results"][0]["Count"]

    assert last_day() > 0
    r = requests.post(f"{info['admin_url']}/clock", json={"advance": 8 * 86400}, verify=info["ca_bundle"], timeout=10)
    assert r.status_code == 200, r.text
    assert last_day() == 0
    assert graph(info, "DeviceProcessEvents | count", "P1D").json()["results"][0]["Count"] == 0

"""End to end: advanced hunting through the `mde` CLI against the emulator's real KQL engine, for every template
purpose and the raw query, with the Graph token under each authentication flow, the fallback and the quotas."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from e2e import api_requests

import MicrosoftDefenderForEndpoint as mde
from lab.demo import sign_in
from lab.instances import set_auth_code

pytestmark = pytest.mark.e2e
GRAPH_ROUTE = "POST /v1.0/security/runHuntingQuery"
DEFENDER_ROUTE = "POST /api/advancedqueries/run"


def context(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def hunt(lab, *args, instance="client-credentials", command="microsoft-atp-advanced-hunting"):
    return lab.mde.run(lab.instances[instance], command, *args, options=("--json",))


@pytest.fixture(scope="module")
def suspect(lab):
    """A device and user with seeded attack activity, found with a raw hunt as an analyst would."""
    rows = context(hunt(lab, 'query=DeviceProcessEvents | where FileName =~ "procdump64.exe" '
                             "| project DeviceName, DeviceId, AccountName | take 1"))["MicrosoftATP.Hunt.Result"]
    assert rows, "the emulator seeds credential dumping on its hunt machines"
    return rows[0]


def args_for(template: mde.HuntTemplate, suspect: dict) -> list[str]:
    args = [f"device_id={suspect['DeviceId']}"]
    if template.mode == "username":
        args = [f"username={suspect['AccountName']}"]
    if template.required == "file+device":
        args.append("file_name=powershell.exe")
    if template.required == "process_cmd":
        args = [f"device_name={suspect['DeviceName'].split('.')[0]}", "process_cmd=CurrentVersion\\Run",
                "query_operation=and"]
    return args


PURPOSES = [(suffix, purpose) for suffix, templates in mde.HUNT_TEMPLATES.items() for purpose in templates]


@pytest.mark.parametrize(("suffix", "purpose"), PURPOSES)
def test_every_template_purpose_finds_rows(lab, suspect, suffix, purpose):
    template = mde.HUNT_TEMPLATES[suffix][purpose]
    args = args_for(template, suspect) + ["limit=5", "time_range=30 days"]
    if purpose:
        args.insert(0, f"query_purpose={purpose}")
    ctx = context(hunt(lab, *args, command=f"microsoft-atp-advanced-hunting-{suffix}"))
    key = mde.HUNT_COMMANDS[suffix][0]
    rows = ctx[f"MicrosoftATP.{key}.Result" + (f".{purpose}" if purpose else "")]
    assert rows and len(rows) <= 5


def test_contract_paths_playbooks_read(lab, suspect):
    ctx = context(hunt(lab, "query_purpose=external_addresses", f"device_name={suspect['DeviceName']}",
                       command="microsoft-atp-advanced-hunting-network-connections"))
    assert all(row["RemoteIP"] and row["TotalConnections"] >= 1
               for row in ctx["MicrosoftATP.HuntNetworkConnections.Result.external_addresses"])
    ctx = context(hunt(lab, "query_purpose=process_excecution_powershell", f"device_id={suspect['DeviceId']}",
                       "file_name=cmd.exe", "query_operation=and",  # the initiating process
                       command="microsoft-atp-advanced-hunting-process-details"))
    rows = ctx["MicrosoftATP.HuntProcessDetails.Result.process_excecution_powershell"]
    assert rows and all(row["DeviceName"] == suspect["DeviceName"] for row in rows)
    assert any("-EncodedCommand" in row["ProcessCommandLine"] for row in rows)


def test_show_query_and_paging(lab, suspect):
    first = hunt(lab, f"device_id={suspect['DeviceId']}", "limit=2", "show_query=true",
                 command="microsoft-atp-advanced-hunting-tampering")
    assert first.returncode == 0, first.stderr
    plain = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-advanced-hunting-tampering",
                        f"device_id={suspect['DeviceId']}", "limit=2", "show_query=true")
    assert "The Query:" in plain.stdout and "DeviceProcessEvents" in plain.stdout
    page1 = context(first)["MicrosoftATP.HuntTampering.Result"]
    page2 = context(hunt(lab, f"device_id={suspect['DeviceId']}", "limit=2", "page=2",
                         command="microsoft-atp-advanced-hunting-tampering"))["MicrosoftATP.HuntTampering.Result"]
    assert len(page1) == 2 and page2 and page1 != page2


def test_hostile_value_is_a_literal_end_to_end(lab, suspect):
    ctx = context(hunt(lab, 'device_name=" or 1==1 or DeviceName has "', "query_purpose=file_deleted",
                       command="microsoft-atp-advanced-hunting-cover-up"))
    assert ctx == {"MicrosoftATP.HuntCoverUp.Result.file_deleted": []}  # the quote did not widen the query


def test_raw_query_named_and_batch(lab):
    ctx = context(hunt(lab, "query=DeviceInfo | summarize Devices = dcount(DeviceId)", "name=inventory"))
    assert ctx["MicrosoftATP.Hunt.Result"]["inventory"][0]["Devices"] == 12_000
    batch = json.dumps([{"name": "logons", "query": "DeviceLogonEvents | take 3"},
                        {"name": "admins", "query": "DeviceLogonEvents | where IsLocalAdmin == true | take 2",
                         "time_range": "7 days"}])
    ctx = context(hunt(lab, f"query_batch={batch}"))
    results = ctx["MicrosoftATP.Hunt.Result"]
    assert [list(item) for item in results] == [["logons"], ["admins"]]
    assert len(results[0]["logons"]) == 3 and all(r["IsLocalAdmin"] for r in results[1]["admins"])


def test_a_bad_query_shows_the_parsers_message(lab):
    result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-advanced-hunting",
                         "query=DeviceInfo | wherex")
    assert result.returncode == 1 and "Fix syntax errors in your query" in result.stderr


# -- the Graph token under each flow ----------------------------------------------------------------------------
def authorization_code_instance(lab, tmp_path):
    """A copy of the authorization-code instance with its own state, signed in once."""
    document = yaml.safe_load(lab.instances["authorization-code"].read_text())
    document["name"] = "authorization-code-hunting"
    path = tmp_path / "authorization-code-hunting.yml"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    login = lab.mde.run(path, "microsoft-atp-generate-login-url", options=("--raw",), check=True)
    set_auth_code(path, sign_in(json.loads(login.stdout)["login_url"], lab.emulator.ready["ca_bundle"]))
    return path


@pytest.mark.parametrize("flow", ["client-credentials", "certificate", "xsoar-app", "managed-identity",
                                  "authorization-code"])
def test_each_flow_hunts_on_graph(lab, flow, tmp_path):
    path = authorization_code_instance(lab, tmp_path) if flow == "authorization-code" else lab.instances[flow]
    graph, defender = api_requests(lab.emulator, GRAPH_ROUTE), api_requests(lab.emulator, DEFENDER_ROUTE)
    result = lab.mde.run(path, "microsoft-atp-advanced-hunting", "query=DeviceInfo | take 1")
    assert result.returncode == 0, result.stderr
    assert "2027-02-01" not in result.stdout  # no fallback note
    assert api_requests(lab.emulator, GRAPH_ROUTE) == graph + 1
    assert api_requests(lab.emulator, DEFENDER_ROUTE) == defender
    # the Defender token still works beside the Graph one
    assert lab.mde.run(path, "microsoft-atp-test").returncode == 0
    if flow == "authorization-code":
        shutil.rmtree(lab.mde.state_dir / "authorization-code-hunting", ignore_errors=True)


def test_an_app_without_threat_hunting_falls_back_and_says_so(lab):
    defender = api_requests(lab.emulator, DEFENDER_ROUTE)
    result = lab.mde.run(lab.instances["defender-hunting"], "microsoft-atp-advanced-hunting",
                         "query=DeviceInfo | take 1")
    assert result.returncode == 0, result.stderr
    assert "lacks the ThreatHunting.Read.All permission" in result.stdout and "2027-02-01" in result.stdout
    assert api_requests(lab.emulator, DEFENDER_ROUTE) == defender + 1
    permissions = lab.mde.run(lab.instances["defender-hunting"], "microsoft-atp-list-auth-permissions", check=True)
    assert "Microsoft Graph permissions" in permissions.stdout


# -- quotas and slow queries ----------------------------------------------------------------------------------------
def test_call_quota_is_waited_out_and_cpu_quota_is_reported(lab):
    lab.emulator.set_faults(hunting_quota={"kind": "calls", "count": 1, "retry_after": 1})
    try:
        ctx = context(hunt(lab, "query=DeviceInfo | take 1"))
        assert ctx["MicrosoftATP.Hunt.Result"]
        lab.emulator.set_faults(hunting_quota={"kind": "cpu", "count": 5})
        graph = api_requests(lab.emulator, GRAPH_ROUTE)
        result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-advanced-hunting",
                             "query=DeviceInfo | take 1")
        assert result.returncode == 1 and "CPU quota for queries is spent" in result.stderr
        assert api_requests(lab.emulator, GRAPH_ROUTE) == graph + 1  # not retried
    finally:
        lab.emulator.set_faults(hunting_quota=None)


def test_slow_and_oversized_queries_give_the_reason_and_a_hint(lab):
    lab.emulator.set_faults(hunting_slow_queries=1)
    try:
        result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-advanced-hunting",
                             "query=DeviceInfo")
        assert result.returncode == 1
        assert "Query exceeded the timeout period" in result.stderr and "Narrow time_range" in result.stderr
        lab.emulator.set_faults(hunting_max_rows=10)
        result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-advanced-hunting",
                             "query=DeviceInfo")
        assert result.returncode == 1 and "Result size limit exceeded" in result.stderr
    finally:
        lab.emulator.set_faults(hunting_slow_queries=0, hunting_max_rows=100_000)

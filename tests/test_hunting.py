"""Advanced hunting: the KQL the templates build (parsed by a real KQL parser), hostile argument values kept as
literals, and the commands at the HTTP boundary on Microsoft Graph, on the Defender API and with the fallback."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import requests
from conftest import API, client_credentials_params, form, make_jwt, mock_entra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import MicrosoftDefenderForEndpoint as mde


def kql_engine():
    """The real KQL parser; installed wherever the emulator runs (Python 3.11+), so only the plugin-only runs
    on older Pythons skip the checks that parse."""
    return pytest.importorskip("duckdb_kql", reason="duckdb-kql needs Python 3.11")


GRAPH = "https://graph.microsoft.com/v1.0/security/runHuntingQuery"
DEFENDER = f"{API}/advancedqueries/run"
DEVICE_ID = "4899036531e374137f63289c3267bad772c13fef"
SHA1 = "50ef7a4d5b2c4e2f8b9c0d1e2f3a4b5c6d7e8f90"
SHA256 = "a" * 64
MD5 = "b" * 32
ROW = {"Timestamp": "2026-11-20T10:00:00.1234567Z", "DeviceName": "pc1.contoso.com", "ReportId": 9223372036854775807,
       "RemoteIP": "203.0.113.9"}


def answer(rows, api="graph"):
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["DeviceName"]
    if api == "graph":
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.security.huntingQueryResults",
                "schema": [{"name": c, "type": "String"} for c in columns], "results": rows}
    return {"Schema": [{"Name": c, "Type": "String"} for c in columns], "Results": rows}


def defender_params(**extra):
    return client_credentials_params(hunting_api="Defender API (retiring)", **extra)


def args_satisfying(template: mde.HuntTemplate) -> dict:
    args = {"device_name": "pc1", "limit": "10"}
    if template.required in ("any", "file+device"):
        args.update(file_name="powershell.exe", sha1=SHA1, sha256=SHA256, md5=MD5, device_id=DEVICE_ID)
    if template.required == "username" or template.mode == "username":
        args["username"] = "alex.smith"
    if template.required == "process_cmd" or template.with_cmd:
        args["process_cmd"] = "CurrentVersion\\Run"
    return args


ALL_PURPOSES = [(suffix, purpose) for suffix, templates in mde.HUNT_TEMPLATES.items() for purpose in templates]


# -- the KQL each template builds -------------------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "purpose"), ALL_PURPOSES)
@pytest.mark.parametrize("operation", ["or", "and"])
def test_every_template_builds_kql_that_parses(suffix, purpose, operation):
    template = mde.HUNT_TEMPLATES[suffix][purpose]
    filters = mde.HuntFilters.from_args({**args_satisfying(template), "query_operation": operation,
                                         "time_range": "2 days ago", "page": "3", "remote_ip_count": "2"})
    query = mde.build_hunt_query(template, filters)
    assert kql_engine().parse(query).ok
    assert query.startswith(template.source)
    assert "| where Timestamp > ago(172800s)" in query
    assert query.endswith("| take 30")  # limit x page: the command keeps the third page of ten


def test_argument_group_is_parenthesised_and_joined_by_the_operation():
    template = mde.HUNT_TEMPLATES["tampering"][None]
    query = mde.build_hunt_query(template, mde.HuntFilters.from_args(
        {"device_name": "pc1,pc2", "device_id": DEVICE_ID, "query_operation": "and"}))
    assert f'and (DeviceName has_any ("pc1", "pc2") and DeviceId in~ ("{DEVICE_ID}"))' in query


def test_file_arguments_map_to_target_or_initiating_columns():
    args = mde.HuntFilters.from_args({"file_name": "a.exe", "sha1": SHA1})
    file_mode = mde.build_hunt_query(mde.HUNT_TEMPLATES["file-origin"][None], args)
    init_mode = mde.build_hunt_query(mde.HUNT_TEMPLATES["process-details"]["beaconing_evidence"], args)
    assert f'(FileName has_any ("a.exe") or SHA1 in~ ("{SHA1}"))' in file_mode
    assert f'(InitiatingProcessFileName has_any ("a.exe") or InitiatingProcessSHA1 in~ ("{SHA1}"))' in init_mode


def test_smb_threshold_and_missing_requirements():
    smb = mde.HUNT_TEMPLATES["lateral-movement-evidence"]["smb_connections"]
    assert "| where RemoteIPCount > 3 |" in mde.build_hunt_query(
        smb, mde.HuntFilters.from_args({"device_name": "pc1", "remote_ip_count": "3"}))
    with pytest.raises(mde.ArgumentError, match="needs at least one of device_name"):
        mde.build_hunt_query(smb, mde.HuntFilters.from_args({}))
    with pytest.raises(mde.ArgumentError, match="needs process_cmd"):
        mde.build_hunt_query(mde.HUNT_TEMPLATES["persistence-evidence"]["registry_entry"],
                             mde.HuntFilters.from_args({"device_name": "pc1"}))
    with pytest.raises(mde.ArgumentError, match="a file .* and a device"):
        mde.build_hunt_query(mde.HUNT_TEMPLATES["process-details"]["process_excecution_powershell"],
                             mde.HuntFilters.from_args({"device_name": "pc1"}))


# -- hostile values stay literals ---------------------------------------------------------------------------------
def literal_value(literal: str) -> str:
    """What the KQL literal evaluates to, computed by the KQL engine."""
    con = kql_engine().connect()
    return kql_engine().kql(con, f"print v = {literal}").fetchall()[0][0]


# commas separate list items and a leading "[" reads as a JSON list: both are argument syntax, not values
PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
    lambda s: s.strip() and "," not in s and not s.strip().startswith("["))
HOSTILE = st.one_of(PRINTABLE, st.sampled_from([
    '"', '\\', '\\"', '" | take 1 | where "', "x\" or 1==1 or \"", "a|b", '"; DeviceInfo | take 1 //', "@'",
    "'", "\\\\\"", "```", "h\"x\"", "){}(", "a\u200bb", "\u202e\"", "\\u0022"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HOSTILE, argument=st.sampled_from(["device_name", "file_name", "username", "process_cmd"]))
def test_hostile_values_never_change_the_query_structure(value, argument):
    template = {"device_name": mde.HUNT_TEMPLATES["file-origin"][None],
                "file_name": mde.HUNT_TEMPLATES["file-origin"][None],
                "username": mde.HUNT_TEMPLATES["cover-up"]["connected_devices"],
                "process_cmd": mde.HUNT_TEMPLATES["persistence-evidence"]["registry_entry"]}[argument]
    benign = mde.build_hunt_query(template, mde.HuntFilters.from_args({argument: "benign"}))
    hostile = mde.build_hunt_query(template, mde.HuntFilters.from_args({argument: value}))
    literal = mde.kql_string(value.strip(), argument)
    assert hostile == benign.replace('"benign"', literal)  # the value occupies exactly the literal's place
    assert kql_engine().parse(hostile).ok
    assert literal_value(literal) == value.strip()


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "tab\there", "nul\x00"])
def test_control_characters_are_refused_naming_the_argument(value):
    with pytest.raises(mde.ArgumentError, match="device_name contains a line break"):
        mde.build_hunt_query(mde.HUNT_TEMPLATES["file-origin"][None],
                             mde.HuntFilters.from_args({"device_name": value}))


@pytest.mark.parametrize(("args", "message"), [
    ({"sha1": "abc"}, "sha1 must be a SHA-1 hash"),
    ({"sha256": SHA1}, "sha256 must be a SHA-256 hash"),
    ({"md5": "z" * 32}, "md5 must be an MD5 hash"),
    ({"device_id": "pc1"}, "device_id must be a machine ID"),
    ({"device_name": "pc1", "time_range": "since Monday"}, "time_range must be a span"),
    ({"device_name": "pc1", "limit": "0"}, "limit must be at least 1"),
    ({"device_name": "pc1", "query_operation": "xor"}, "query_operation must be one of or, and"),
])
def test_bad_arguments_fail_before_any_call(xsoar, requests_mock, args, message):
    assert_refused_before_any_call(xsoar, requests_mock, "microsoft-atp-advanced-hunting-file-origin", args, message)


def assert_refused_before_any_call(xsoar, requests_mock, command, args, message):
    run = xsoar.run(command, args, params=defender_params())
    assert message in run.error
    assert not requests_mock.request_history


# -- Defender API back end ----------------------------------------------------------------------------------------
def test_template_on_the_defender_api(xsoar, requests_mock):
    mock_entra(requests_mock, token=make_jwt({"roles": ["AdvancedQuery.Read.All"]}))
    rows = [dict(ROW, RemoteIP=f"203.0.113.{i}", TotalConnections=10 - i) for i in range(7)]
    call = requests_mock.post(DEFENDER, json=answer(rows, "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting-network-connections",
                    {"query_purpose": "external_addresses", "device_name": "pc1", "limit": "3", "page": "2",
                     "show_query": "true"}, params=defender_params())
    query = call.last_request.json()["Query"]
    assert call.last_request.json() == {"Query": query}
    assert query.startswith("DeviceNetworkEvents\n") and query.endswith("| take 6")
    result = run.context["MicrosoftATP.HuntNetworkConnections.Result.external_addresses"]
    assert [r["RemoteIP"] for r in result] == ["203.0.113.3", "203.0.113.4", "203.0.113.5"]
    assert result[0]["ReportId"] == "9223372036854775807"  # 64-bit id kept exact
    readable = run.entry["HumanReadable"]
    assert readable.startswith(f"### The Query:\n```\n{query}\n```")
    assert "Network Connections Hunt (external_addresses) Results" in readable
    assert "Note:" not in readable


def test_raw_query_time_range_on_the_defender_api_filters_after_the_table(xsoar, requests_mock):
    mock_entra(requests_mock)
    call = requests_mock.post(DEFENDER, json=answer([ROW], "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo | take 5", "time_range": "60 minutes"},
                    params=defender_params())
    assert call.last_request.json() == {"Query": "DeviceInfo | where Timestamp > ago(3600s) | take 5"}
    assert run.context["MicrosoftATP.Hunt.Result"] == [dict(ROW, ReportId=str(ROW["ReportId"]))]
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "let x = 1; DeviceInfo", "time_range": "1 day"},
                    params=defender_params())
    assert "time_range needs Microsoft Graph" in run.error


def test_cpu_quota_fails_at_once_while_the_call_quota_is_waited_out(xsoar, requests_mock):
    mock_entra(requests_mock)
    cpu = {"error": {"code": "TooManyRequests", "message": "You have exceeded processing resources allocated to this "
                                                           "tenant. You can run queries again in 00:14:12."}}
    call = requests_mock.post(DEFENDER, status_code=429, json=cpu, headers={"Retry-After": "852"})
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"}, params=defender_params())
    assert "CPU quota for queries is spent" in run.error and "00:14:12" in run.error
    assert call.call_count == 1 and xsoar.sleeps == []
    calls = {"error": {"code": "TooManyRequests", "message": "API calls quota exceeded! You can send requests again "
                                                             "in 7 seconds."}}
    requests_mock.post(DEFENDER, [{"status_code": 429, "json": calls, "headers": {"Retry-After": "7"}},
                                  {"json": answer([ROW], "defender")}])
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"}, params=defender_params())
    assert run.context["MicrosoftATP.Hunt.Result"][0]["DeviceName"] == "pc1.contoso.com"
    assert xsoar.sleeps == [7.0]


@pytest.mark.parametrize("message", ["Query exceeded the timeout period.",
                                     "Query execution has exceeded the allowed result size. Optimize your query."])
def test_limits_give_microsofts_reason_and_a_hint(xsoar, requests_mock, message):
    mock_entra(requests_mock)
    requests_mock.post(DEFENDER, status_code=400, json={"error": {"code": "BadRequest", "message": message}})
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"}, params=defender_params())
    assert message in run.error and mde.HUNT_LIMIT_HINT in run.error


def test_syntax_errors_pass_microsofts_message(xsoar, requests_mock):
    mock_entra(requests_mock)
    requests_mock.post(DEFENDER, status_code=400, json={"error": {
        "code": "BadRequest", "message": "Query operator expected. Fix syntax errors in your query."}})
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo | wherex"}, params=defender_params())
    assert "Fix syntax errors in your query" in run.error and mde.HUNT_LIMIT_HINT not in run.error


def test_a_slow_answer_names_the_timeout_argument(xsoar, requests_mock):
    mock_entra(requests_mock)
    requests_mock.post(DEFENDER, exc=requests.exceptions.ReadTimeout)
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo", "timeout": "5"},
                    params=defender_params())
    assert "Timed out" in run.error and "raise timeout" in run.error


# -- raw command: batches and names ------------------------------------------------------------------------------
def test_query_batch_runs_each_named_query_in_turn(xsoar, requests_mock):
    mock_entra(requests_mock)
    call = requests_mock.post(DEFENDER, [{"json": answer([{"DeviceName": "a"}], "defender")},
                                         {"json": answer([{"DeviceName": "b"}], "defender")}])
    batch = json.dumps({"queries": [{"name": "first", "query": "DeviceInfo | take 1"},
                                    {"name": "second", "query": "DeviceInfo | take 2", "time_range": "1 hour"}]})
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query_batch": batch}, params=defender_params())
    assert [r.json()["Query"] for r in call.request_history] == [
        "DeviceInfo | take 1", "DeviceInfo | where Timestamp > ago(3600s) | take 2"]
    assert not run.errors and len(run.results) == 2
    assert run.results[1]["EntryContext"] == {
        "MicrosoftATP.Hunt.Result": [{"first": [{"DeviceName": "a"}]}, {"second": [{"DeviceName": "b"}]}]}
    assert "Hunt results for first query" in run.results[0]["HumanReadable"]


def test_a_named_query_is_stored_under_its_name(xsoar, requests_mock):
    mock_entra(requests_mock)
    requests_mock.post(DEFENDER, json=answer([{"DeviceName": "a"}], "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo", "name": "devices"},
                    params=defender_params())
    assert run.context == {"MicrosoftATP.Hunt.Result": {"devices": [{"DeviceName": "a"}]}}


@pytest.mark.parametrize(("args", "message"), [
    ({"query": "DeviceInfo", "query_batch": "[]"}, "Both query and query_batch"),
    ({}, "Give query"),
    ({"query_batch": "not json"}, "query_batch must be a JSON list"),
    ({"query_batch": json.dumps([{"name": f"q{i}", "query": "DeviceInfo"} for i in range(11)])}, "at most 10"),
    ({"query_batch": json.dumps([{"query": "DeviceInfo"}])}, "item 1 needs both a name and a query"),
    ({"query_batch": json.dumps([{"name": "a", "query": "T"}, {"name": "a", "query": "T"}])}, "two queries named"),
    ({"query": "DeviceInfo", "timeout": "0"}, "timeout must be at least 1"),
])
def test_raw_argument_errors(xsoar, requests_mock, args, message):
    assert_refused_before_any_call(xsoar, requests_mock, "microsoft-atp-advanced-hunting", args, message)


def test_unsupported_purpose_is_named(xsoar, requests_mock):
    run = xsoar.run("microsoft-atp-advanced-hunting-cover-up", {"query_purpose": "rootkits", "username": "a"},
                    params=defender_params())
    assert "query_purpose must be one of file_deleted" in run.error


# -- retirement ---------------------------------------------------------------------------------------------------
def test_after_retirement_the_defender_api_is_not_called(xsoar, requests_mock):
    xsoar.clock.time = datetime(2027, 2, 2, tzinfo=timezone.utc).timestamp()
    mock_entra(requests_mock)
    call = requests_mock.post(DEFENDER, json=answer([ROW], "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"}, params=defender_params())
    assert "retired on 2027-02-01" in run.error and "ThreatHunting.Read.All" in run.error
    assert call.call_count == 0


# -- Microsoft Graph back end and the fallback ------------------------------------------------------------------
GRAPH_TOKEN = make_jwt({"aud": "https://graph.microsoft.com", "roles": ["ThreatHunting.Read.All"]})
GRAPH_TOKEN_NO_ROLE = make_jwt({"aud": "https://graph.microsoft.com", "roles": []})
DEFENDER_TOKEN = make_jwt({"roles": ["AdvancedQuery.Read.All", "Machine.Read.All"]})


def entra_by_scope(requests_mock, graph_token=GRAPH_TOKEN, graph_error=None, login="https://login.microsoftonline.com"):
    """The token endpoint answering per requested scope: the Defender token, or the Graph token (or an error)."""
    endpoint = mock_entra(requests_mock, login=login)

    def token(request, context):
        if "graph" in form(request)["scope"]:
            if graph_error:
                context.status_code = 400
                return graph_error
            return {"token_type": "Bearer", "expires_in": 3599, "access_token": graph_token}
        return {"token_type": "Bearer", "expires_in": 3599, "access_token": DEFENDER_TOKEN}

    return requests_mock.post(endpoint._url, json=token)


def test_auto_runs_on_graph_with_a_graph_token(xsoar, requests_mock):
    tokens = entra_by_scope(requests_mock)
    call = requests_mock.post(GRAPH, json=answer([ROW]))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo | take 5", "time_range": "1 hour"})
    assert call.last_request.json() == {"Query": "DeviceInfo | take 5", "Timespan": "PT3600S"}
    assert call.last_request.headers["Authorization"] == f"Bearer {GRAPH_TOKEN}"
    assert "https://graph.microsoft.com/.default" in [form(r)["scope"] for r in tokens.request_history]
    assert run.context["MicrosoftATP.Hunt.Result"][0]["RemoteIP"] == "203.0.113.9"
    assert "Note:" not in run.entry["HumanReadable"]
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"})
    assert len([r for r in tokens.request_history if "graph" in r.text]) == 1  # reused across runs
    xsoar.run("microsoft-atp-list-auth-permissions")  # needs the Defender token too
    assert xsoar.context["graph_access_token"] == GRAPH_TOKEN  # kept apart from the Defender token,
    assert xsoar.context["access_token"] == DEFENDER_TOKEN  # which keeps the older integration's keys


def test_graph_schema_with_capitalised_keys_is_read_too(xsoar, requests_mock):
    entra_by_scope(requests_mock)
    requests_mock.post(GRAPH, json={"Schema": [{"Name": "DeviceName", "Type": "String"}],
                                    "results": [{"DeviceName": "a"}]})
    run = xsoar.run("microsoft-atp-advanced-hunting-privilege-escalation", {"device_name": "a"})
    assert run.context == {"MicrosoftATP.HuntPrivilegeEscalation.Result": [{"DeviceName": "a"}]}
    assert "|DeviceName|" in run.entry["HumanReadable"]


@pytest.mark.parametrize(("graph_token", "graph_error", "reason"), [
    (GRAPH_TOKEN_NO_ROLE, None, "lacks the ThreatHunting.Read.All permission"),
    (None, {"error": "invalid_scope", "error_description": "AADSTS70011: The provided value for scope is not valid.",
            "error_codes": [70011]}, "no Microsoft Graph token could be had"),
])
def test_auto_falls_back_to_the_defender_api_and_says_so_once(xsoar, requests_mock, graph_token, graph_error,
                                                             reason):
    entra_by_scope(requests_mock, graph_token=graph_token, graph_error=graph_error)
    graph = requests_mock.post(GRAPH, json=answer([ROW]))
    defender = requests_mock.post(DEFENDER, json=answer([{"DeviceName": "x"}], "defender"))
    batch = json.dumps([{"name": "a", "query": "DeviceInfo"}, {"name": "b", "query": "DeviceInfo"}])
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query_batch": batch})
    assert graph.call_count == 0 and defender.call_count == 2
    notes = [r["HumanReadable"].count("2027-02-01") for r in run.results]
    assert notes == [1, 0]
    assert reason in run.results[0]["HumanReadable"]


def test_auto_falls_back_when_graph_refuses_the_query(xsoar, requests_mock):
    entra_by_scope(requests_mock)
    requests_mock.post(GRAPH, status_code=403, json={"error": {"code": "Forbidden", "message": "Missing role"}})
    requests_mock.post(DEFENDER, json=answer([{"DeviceName": "x"}], "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting-tampering", {})
    assert run.context == {"MicrosoftATP.HuntTampering.Result": [{"DeviceName": "x"}]}
    assert "Microsoft Graph refused the query (HTTP 403)" in run.entry["HumanReadable"]


def test_graph_only_says_what_permission_to_grant(xsoar, requests_mock):
    entra_by_scope(requests_mock, graph_token=GRAPH_TOKEN_NO_ROLE)
    defender = requests_mock.post(DEFENDER, json=answer([], "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"},
                    params=client_credentials_params(hunting_api="Microsoft Graph"))
    assert "Grant the app the Microsoft Graph application permission ThreatHunting.Read.All" in run.error
    assert defender.call_count == 0


def test_fallback_after_retirement_says_the_api_is_retired_and_what_to_grant(xsoar, requests_mock):
    xsoar.clock.time = datetime(2027, 3, 1, tzinfo=timezone.utc).timestamp()
    entra_by_scope(requests_mock, graph_token=make_jwt({"aud": "https://graph.microsoft.com", "roles": [],
                                                        "exp": int(xsoar.clock.time) + 3600}))
    defender = requests_mock.post(DEFENDER, json=answer([], "defender"))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"})
    assert "retired on 2027-02-01" in run.error and "ThreatHunting.Read.All" in run.error
    assert "lacks the ThreatHunting.Read.All permission" in run.error
    assert defender.call_count == 0


def test_graph_cpu_quota_is_reported_without_retrying(xsoar, requests_mock):
    entra_by_scope(requests_mock)
    call = requests_mock.post(GRAPH, status_code=429, headers={"Retry-After": "852"}, json={"error": {
        "code": "TooManyRequests", "message": "You have exceeded processing resources allocated to this tenant. "
                                              "You can run queries again in 00:14:12."}})
    run = xsoar.run("microsoft-atp-advanced-hunting-cover-up", {"query_purpose": "connected_devices",
                                                                "username": "alex"})
    assert "CPU quota" in run.error and call.call_count == 1 and xsoar.sleeps == []


@pytest.mark.parametrize(("params", "graph_host", "audience", "login"), [
    ({"endpoint_type": "US GCC"}, "https://graph.microsoft.com", "https://graph.microsoft.com",
     "https://login.microsoftonline.com"),
    ({"endpoint_type": "US GCC-High"}, "https://graph.microsoft.us", "https://graph.microsoft.us",
     "https://login.microsoftonline.us"),
    ({"endpoint_type": "DoD"}, "https://dod-graph.microsoft.us", "https://dod-graph.microsoft.us",
     "https://login.microsoftonline.us"),
    # a custom Graph URL (a proxy) still asks for a Microsoft Graph token
    ({"endpoint_type": "Custom", "url": "https://mde.example", "graph_url": "https://graph.example/"},
     "https://graph.example", "https://graph.microsoft.com", "https://login.microsoftonline.com"),
])
def test_each_cloud_hunts_on_its_own_graph_host(xsoar, requests_mock, params, graph_host, audience, login):
    tokens = entra_by_scope(requests_mock, login=login)
    call = requests_mock.post(f"{graph_host}/v1.0/security/runHuntingQuery", json=answer([ROW]))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"},
                    params=client_credentials_params(**params))
    assert not run.errors and call.call_count == 1
    scopes = {form(r)["scope"] for r in tokens.request_history}
    assert f"{audience}/.default" in scopes


def test_permissions_listing_shows_both_tokens(xsoar, requests_mock):
    entra_by_scope(requests_mock)
    run = xsoar.run("microsoft-atp-list-auth-permissions")
    assert run.entry["Contents"]["graph_roles"] == ["ThreatHunting.Read.All"]
    assert "### Microsoft Graph permissions" in run.entry["HumanReadable"]
    missing = {row["Missing permission"]: row["Commands it blocks"] for row in run.entry["Contents"]["missing"]}
    assert not any("advanced-hunting" in commands for commands in missing.values())


def test_permissions_listing_names_hunting_as_blocked_without_either_permission(xsoar, requests_mock):
    entra_by_scope(requests_mock, graph_token=GRAPH_TOKEN_NO_ROLE)
    requests_mock.post(mock_entra(requests_mock)._url, json=lambda request, context: {
        "token_type": "Bearer", "expires_in": 3599,
        "access_token": GRAPH_TOKEN_NO_ROLE if "graph" in form(request)["scope"] else make_jwt(
            {"roles": ["Machine.Read.All"]})})
    run = xsoar.run("microsoft-atp-list-auth-permissions")
    missing = {row["Missing permission"]: row["Commands it blocks"] for row in run.entry["Contents"]["missing"]}
    blocked = missing["ThreatHunting.Read.All or AdvancedQuery.Read.All or AdvancedQuery.Read"]
    assert "microsoft-atp-advanced-hunting-cover-up" in blocked
    assert "carries no permissions" in run.entry["HumanReadable"]


@pytest.mark.parametrize(("suffix", "purpose"), ALL_PURPOSES)
def test_every_template_command_writes_its_contract_path(xsoar, requests_mock, suffix, purpose):
    from conftest import declared_output_paths

    name = f"microsoft-atp-advanced-hunting-{suffix}"
    path = f"MicrosoftATP.{mde.HUNT_COMMANDS[suffix][0]}.Result" + (f".{purpose}" if purpose else "")
    columns = [p[len(path) + 1:] for p in declared_output_paths()[name] if p.startswith(path + ".")
               and "." not in p[len(path) + 1:]]
    row = {column: "x" for column in columns} or {"DeviceName": "x"}
    entra_by_scope(requests_mock)
    call = requests_mock.post(GRAPH, json=answer([row]))
    args = args_satisfying(mde.HUNT_TEMPLATES[suffix][purpose])
    run = xsoar.run(name, {**args, **({"query_purpose": purpose} if purpose else {})})
    assert run.context == {path: [row]}
    assert kql_engine().parse(call.last_request.json()["Query"]).ok


def test_the_xsoar_app_flow_asks_the_oproxy_for_a_graph_token(xsoar, requests_mock):
    from test_auth import oproxy_params

    oproxy = requests_mock.post(mde.OPROXY_URL, json=lambda request, context: {
        "access_token": GRAPH_TOKEN if request.json()["scope"] == "graph" else DEFENDER_TOKEN, "expires_in": 3595})
    call = requests_mock.post(GRAPH, json=answer([ROW]))
    run = xsoar.run("microsoft-atp-advanced-hunting", {"query": "DeviceInfo"}, params=oproxy_params())
    assert not run.errors and call.last_request.headers["Authorization"] == f"Bearer {GRAPH_TOKEN}"
    assert [r.json()["scope"] for r in oproxy.request_history] == ["graph"]

"""Hostile input: values in URL paths stay one segment or are refused; no argument makes the plugin raise."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests_mock as rm
import yaml
from conftest import API, Run, Xsoar, mock_entra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import MicrosoftDefenderForEndpoint as mde

MID = "4899036531e374137f63289c3267bad772c13fef"
SHA1 = "a" * 40
ACTION_ID = "7a3e8c1d-5b2f-4e6a-9c0d-1f2e3a4b5c6d"
ALERT_ID = "da637472900382838869_1364969609"
ROOT = Path(__file__).resolve().parent.parent
YML = yaml.safe_load((ROOT / "MicrosoftDefenderForEndpoint.yml").read_text())

# Every argument whose value goes into a URL path, with valid values for the command's other arguments.
PATH_ARGUMENTS = [
    ("microsoft-atp-get-machine-details", "machine_id", {}),
    ("microsoft-atp-get-machine-users", "machine_id", {}),
    ("microsoft-atp-add-remove-machine-tag", "machine_id", {"action": "Add", "tag": "vip"}),
    ("microsoft-atp-get-file-related-machines", "file_hash", {}),
    ("microsoft-atp-get-domain-machines", "domain", {}),
    ("microsoft-atp-get-user-machines", "username", {}),
    ("microsoft-atp-get-machine-by-ip", "ip", {"timestamp": "1 hour"}),
    ("microsoft-atp-isolate-machine", "machine_id", {"comment": "c", "isolation_type": "Full"}),
    ("microsoft-atp-unisolate-machine", "machine_id", {"comment": "c"}),
    ("microsoft-atp-run-antivirus-scan", "machine_id", {"comment": "c", "scan_type": "Quick"}),
    ("microsoft-atp-restrict-app-execution", "machine_id", {"comment": "c"}),
    ("microsoft-atp-remove-app-restriction", "machine_id", {"comment": "c"}),
    ("microsoft-atp-stop-and-quarantine-file", "machine_id", {"comment": "c", "file_hash": SHA1}),
    ("microsoft-atp-stop-and-quarantine-file", "file_hash", {"comment": "c", "machine_id": MID}),
    ("microsoft-atp-collect-investigation-package", "machine_id", {"comment": "c"}),
    ("microsoft-atp-request-and-download-investigation-package", "machine_id", {"comment": "c"}),
    ("microsoft-atp-offboard-machine", "machine_id", {"comment": "c"}),
    ("microsoft-atp-cancel-machine-action", "action_id", {"comment": "c"}),
    ("microsoft-atp-get-investigation-package-sas-uri", "action_id", {}),
    ("microsoft-atp-get-alert-by-id", "alert_ids", {}),
    ("microsoft-atp-update-alert", "alert_id", {"status": "Resolved"}),
    ("microsoft-atp-get-alert-related-user", "id", {}),
    ("microsoft-atp-get-alert-related-files", "id", {}),
    ("microsoft-atp-get-alert-related-ips", "id", {}),
    ("microsoft-atp-get-alert-related-domains", "id", {}),
    ("microsoft-atp-get-machine-alerts", "machine_id", {}),
    ("microsoft-atp-get-file-alerts", "file_hash", {}),
    ("microsoft-atp-get-ip-alerts", "ip", {}),
    ("microsoft-atp-get-domain-alerts", "domain", {}),
    ("microsoft-atp-get-user-alerts", "username", {}),
    ("microsoft-atp-list-investigations", "id", {}),
    ("microsoft-atp-start-investigation", "machine_id", {"comment": "c"}),
    ("microsoft-atp-live-response-put-file", "machine_id", {"comment": "c", "file_name": "a.ps1"}),
    ("microsoft-atp-live-response-run-script", "machine_id", {"comment": "c", "scriptName": "a.ps1"}),
    ("microsoft-atp-live-response-get-file", "machine_id", {"comment": "c", "path": "C:\\a.txt"}),
    ("microsoft-atp-live-response-result", "machine_action_id", {"command_index": "0"}),
    ("microsoft-atp-live-response-result", "command_index", {"machine_action_id": ACTION_ID}),
    ("microsoft-atp-live-response-cancel-action", "machine_action_id", {"comment": "c"}),
    ("microsoft-atp-delete-library-file", "file_name", {}),
    ("file", "file", {}),
    ("microsoft-atp-get-file-info", "hash", {}),
    ("microsoft-atp-get-file-statistics", "file_hash", {}),
    ("microsoft-atp-get-ip-statistics", "ip", {}),
    ("microsoft-atp-get-domain-statistics", "domain", {}),
]
HOSTILE = ["..", ".", " .. ", "a/b", "../machines", "a?b", "a#b", "a%2e%2e", "%2F", "x')", "a\\b", "fe80::1%x')",
           "fe80::1%?$top=1&x=", "fe80::1%#", "a\nb", "x' or 1 eq 1 or 'x"]


def api_paths(mocker) -> list[str]:
    return [request.path for request in mocker.request_history if request.path.startswith("/api/")]


def test_every_path_argument_of_every_command_is_listed_here():
    """A new command with a path argument must be added to PATH_ARGUMENTS (the lists must not drift)."""
    listed = {command for command, _, _ in PATH_ARGUMENTS}
    for command in listed:
        assert command in mde.COMMANDS


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(("command", "argument", "others"), PATH_ARGUMENTS)
def test_hostile_path_values_are_refused_before_any_request(xsoar, requests_mock, command, argument, others, value):
    mock_entra(requests_mock)
    requests_mock.register_uri(rm.ANY, re.compile(r"https://api\.securitycenter\.microsoft\.com/.*"),
                               json={"value": []})
    run = xsoar.run(command, args={**others, argument: value})

    paths = api_paths(requests_mock)
    if not paths:  # refused before any request, naming the argument
        assert run.errors, run.results
        assert argument in run.errors[0] or argument.rstrip("s") in run.errors[0], run.errors[0]
    sent = value.rsplit("\\", 1)[-1] if argument == "username" else value  # DOMAIN\user is looked up as user
    for path in paths:  # or sent as exactly one segment that the HTTP stack cannot reinterpret
        segments = [unquote(part) for part in path.split("/")]
        assert sent in segments and "." not in segments and ".." not in segments, (command, value, path)


@pytest.mark.parametrize("username", ["jdoe", "CONTOSO\\jdoe", "j doe", "o'brien"])
def test_a_valid_account_name_is_exactly_one_path_segment(xsoar, requests_mock, username):
    mock_entra(requests_mock)
    route = requests_mock.get(re.compile(f"{API}/users/.*/alerts"), json={"value": []})
    xsoar.run("microsoft-atp-get-user-alerts", args={"username": username})

    segments = route.last_request.path.split("/")
    assert segments[:3] == ["", "api", "users"] and segments[4:] == ["alerts"] and len(segments) == 5


# ---- bodies that are not what Microsoft documents ------------------------------------------------------------

ODD_BODIES = [
    {"status_code": 200, "text": ""},
    {"status_code": 201, "json": [1, 2]},
    {"status_code": 200, "text": "<html><body>Gateway says hi</body></html>", "headers": {"Content-Type": "text/html"}},
]


@pytest.mark.parametrize("body", ODD_BODIES)
@pytest.mark.parametrize(("command", "method", "path", "args"), [
    ("microsoft-atp-get-machine-details", "GET", f"machines/{MID}", {"machine_id": MID}),
    ("microsoft-atp-add-remove-machine-tag", "POST", f"machines/{MID}/tags",
     {"machine_id": MID, "action": "Add", "tag": "vip"}),
    ("microsoft-atp-update-alert", "PATCH", f"alerts/{ALERT_ID}", {"alert_id": ALERT_ID, "status": "Resolved"}),
    ("microsoft-atp-start-investigation", "POST", f"machines/{MID}/startInvestigation",
     {"machine_id": MID, "comment": "c"}),
    ("microsoft-atp-cancel-machine-action", "POST", f"machineactions/{ACTION_ID}/cancel",
     {"action_id": ACTION_ID, "comment": "c"}),
])
def test_an_unexpected_success_body_is_a_clear_error_without_context(xsoar, requests_mock, command, method, path,
                                                                    args, body):
    mock_entra(requests_mock)
    requests_mock.register_uri(method, f"{API}/{path}", **body)
    run = xsoar.run(command, args=args)

    assert run.errors and not any(entry.get("EntryContext") for entry in run.results if isinstance(entry, dict))
    message = run.errors[0]
    assert f"{method} " in message and f"HTTP {body['status_code']}" in message, message
    assert "Failed to execute" not in message and "Error:" not in message


# ---- dates, first fetch, encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "args", "name"), [
    ("microsoft-atp-list-alerts", {"creation_time": "5000 years"}, "creation_time"),
    ("microsoft-atp-get-machine-by-ip", {"ip": "10.0.0.1", "timestamp": "99999999 weeks"}, "timestamp"),
    ("microsoft-atp-create-alert", {"machine_id": MID, "severity": "Low", "title": "t", "description": "d",
                                    "recommended_action": "r", "event_time": "0000-01-01T00:00:00Z",
                                    "report_id": "1"}, "event_time"),
])
def test_out_of_range_dates_name_the_argument(xsoar, requests_mock, command, args, name):
    mock_entra(requests_mock)
    run = xsoar.run(command, args=args)
    assert name in run.error and "Error" not in run.error.split(":")[0]


def test_a_blank_first_fetch_time_means_the_default_for_the_test_button_and_for_fetching(xsoar, requests_mock):
    mock_entra(requests_mock)
    alerts = requests_mock.get(f"{API}/alerts", json={"value": []})
    xsoar.params = {**xsoar.params, "isFetch": True, "first_fetch_timestamp": " "}

    assert xsoar.run("test-module").results == ["ok"]
    assert xsoar.run("fetch-incidents").errors == []
    assert "alertcreationtime ge" in alerts.last_request.qs["$filter"][0]  # requests-mock lower-cases queries


def test_a_lone_surrogate_is_refused_naming_the_argument(xsoar, requests_mock):
    mock_entra(requests_mock)
    run = xsoar.run("microsoft-atp-get-user-alerts", args={"username": "j\udcffdoe"})
    assert "username" in run.error and "Unicode" in run.error


# ---- fuzz: no argument of any command makes the plugin raise ----------------------------------------------------

EXCEPTION_NAME = re.compile(r"\b(Traceback|[A-Z]\w*(Error|Exception)|NoMockAddress)\b")
YML_ARGS = {command["name"]: [arg["name"] for arg in command.get("arguments") or []]
            for command in YML["script"]["commands"]}
FUZZED_COMMANDS = sorted(name for name in YML_ARGS if name in mde.COMMANDS and name not in (
    "microsoft-atp-generate-login-url", "microsoft-atp-auth-reset"))
NASTY_VALUES = ["", " ", "..", "'", "\\", "x' or 1 eq 1", "|", "\n", "-1", "0", "999999999999999999999",
                         "1e309", "5000 years", "a,,b, ,", "true", "maybe", "null", "%00", "\udcff", "🦠", "é" * 300,
                         MID, SHA1, ALERT_ID, ACTION_ID, "10.0.0.1", "fe80::1%eth0", "contoso.com",
                         "2024-05-01T10:00:00Z", "Full", "Quick", "Add", "High", "New"]
VALUE = st.one_of(st.sampled_from(NASTY_VALUES), st.text(max_size=40), st.integers(min_value=-10**20, max_value=10**20).map(str))


def run_with_any_answer(command: str, args: dict, workdir) -> Run:
    """Runs a command against an API that answers every call with a plausible success."""
    with pytest.MonkeyPatch.context() as mp, rm.Mocker() as mocker:
        xsoar = Xsoar(mp, workdir)
        mock_entra(mocker)
        mocker.register_uri(rm.ANY, re.compile(r"https://api\.securitycenter\.microsoft\.com/.*"),
                            json={"value": [], "id": ACTION_ID, "status": "Succeeded", "machineId": MID})
        return xsoar.run(command, args=args)


def assert_handled(command: str, args: dict, run: Run) -> None:
    names = YML_ARGS[command]
    for entry in run.results:
        text = entry if isinstance(entry, str) else str(entry.get("Contents")) + str(entry.get("HumanReadable"))
        for value in sorted(map(str, args.values()), key=len, reverse=True):
            text = text.replace(value, "")  # an argument echoed back (e.g. the text 'AError') is not an exception
        assert not EXCEPTION_NAME.search(text), (command, args, text)
    for error in run.errors:
        assert any(name in error for name in names) or re.search(r"HTTP|Microsoft|failed for every", error), (
            command, args, error)


@pytest.mark.parametrize("command", FUZZED_COMMANDS)
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_arguments_never_raise_and_rejections_name_an_argument(command, data, tmp_path_factory):
    names = YML_ARGS[command]
    args = data.draw(st.dictionaries(st.sampled_from(names), VALUE, max_size=len(names)) if names else st.just({}))
    assert_handled(command, args, run_with_any_answer(command, args, tmp_path_factory.mktemp("fuzz")))


@pytest.mark.parametrize("command", FUZZED_COMMANDS)
def test_every_nasty_value_in_every_argument_is_handled(command, tmp_path):
    """The deterministic sweep beside the random one: each nasty value alone in each argument."""
    for name in YML_ARGS[command]:
        for value in NASTY_VALUES:
            args = {name: value}
            assert_handled(command, args, run_with_any_answer(command, args, tmp_path))

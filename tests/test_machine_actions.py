"""Machine actions: requesting response actions per machine, reusing pending ones, polling them to a
final status with scheduled commands, investigation packages, listing and cancelling actions."""

from __future__ import annotations

import json
import os
import re

import pytest
import requests
from conftest import API, mock_entra
from test_machines import MID, MID2, SHA1, SHA1_B, api_calls, path, query

NOW = 1_714_557_600  # 2024-05-01T10:00:00Z
A1 = "7a3e8c1d-5b2f-4e6a-9c0d-1f2e3a4b5c6d"
A2 = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
A3 = "c0ffee00-1111-2222-3333-444455556666"
ACTION_KEY = "MicrosoftATP.MachineAction(val.ID && val.ID == obj.ID)"
ISOLATE = "microsoft-atp-isolate-machine"
ERROR_PENDING = {"error": {"code": "ActiveRequestAlreadyExists", "message": "Action is already in progress",
                           "target": "corr-1"}}
HOSTS = {MID: "desktop-1.contoso.com", MID2: "server-2.contoso.com"}


def action(action_id: str = A1, machine_id: str = MID, type_: str = "Isolate", status: str = "Pending",
           **extra) -> dict:
    """A MachineAction as Microsoft returns it."""
    return {"id": action_id, "type": type_, "title": None, "requestor": "xsoar-app", "requestorComment": "contain",
            "status": status, "machineId": machine_id, "computerDnsName": HOSTS.get(machine_id, "pc"),
            "creationDateTimeUtc": "2024-05-01T10:00:00.1234567Z", "lastUpdateDateTimeUtc": "2024-05-01T10:00:01Z",
            "scope": "Full" if type_ == "Isolate" else None, "relatedFileInfo": None, **extra}


def action_context(action_id: str = A1, machine_id: str = MID, type_: str = "Isolate", status: str = "Pending",
                   preexisting: bool = False, **extra) -> dict:
    return {"ID": action_id, "Type": type_, "Scope": "Full" if type_ == "Isolate" else None, "Requestor": "xsoar-app",
            "RequestorComment": "contain", "Status": status, "MachineID": machine_id,
            "ComputerDNSName": HOSTS.get(machine_id, "pc"), "CreationDateTimeUtc": "2024-05-01T10:00:00.1234567Z",
            "LastUpdateTimeUtc": "2024-05-01T10:00:01Z", "RelatedFileInfo": None, "PreExisting": preexisting, **extra}


@pytest.fixture(autouse=True)
def frozen_clock(xsoar, requests_mock):
    mock_entra(requests_mock)
    xsoar.clock.time = float(NOW)
    return xsoar.clock


def status_poll(requests_mock, *actions: dict):
    return requests_mock.get(f"{API}/machineactions", json={"value": list(actions)})


# ---- the polling state machine, entry by entry ------------------------------------------------------


def test_isolate_polls_every_machine_to_a_final_status(xsoar, requests_mock, frozen_clock):
    isolate_1 = requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=201, json=action(A1, MID))
    isolate_2 = requests_mock.post(f"{API}/machines/{MID2}/isolate", status_code=201, json=action(A2, MID2))
    args = {"machine_id": f"{MID},{MID2}", "comment": "contain", "isolation_type": "full"}

    # Round 1: both actions requested and returned at once, with a scheduled rerun.
    first = xsoar.run(ISOLATE, args=args).entry

    assert isolate_1.last_request.json() == {"Comment": "contain", "IsolationType": "Full"}
    assert isolate_2.last_request.json() == {"Comment": "contain", "IsolationType": "Full"}
    assert first["EntryContext"] == {ACTION_KEY: [action_context(A1, MID), action_context(A2, MID2)]}
    assert first["PollingCommand"] == ISOLATE
    assert first["NextRun"] == "10"
    assert first["Timeout"] == "600"
    assert first["PollingArgs"] == {**args, "action_ids": f"{A1},{A2}", "polling_started": str(NOW)}
    assert "Waiting for 2 of 2 actions: Isolate on desktop-1.contoso.com (Pending), " \
           "Isolate on server-2.contoso.com (Pending)" in first["HumanReadable"]
    assert f"|desktop-1.contoso.com|{A1}|Isolate|Pending|no||" in first["HumanReadable"]

    # Round 2: one request for both actions, no new POST; one is done, one still pending.
    frozen_clock.advance(10)
    poll = status_poll(requests_mock, action(A1, MID, status="Succeeded"), action(A2, MID2, status="InProgress"))
    second = xsoar.run(ISOLATE, args=first["PollingArgs"]).entry

    assert poll.call_count == 1
    assert query(poll.last_request) == {"$filter": [f"id in ('{A1}', '{A2}')"], "$top": ["10000"], "$skip": ["0"]}
    assert isolate_1.call_count == isolate_2.call_count == 1
    assert second["PollingArgs"] == first["PollingArgs"]
    assert second["HumanReadable"] == ("Waiting for 1 of 2 actions: Isolate on server-2.contoso.com (InProgress). "
                                       "Checking again in 10 s.")
    assert second["EntryContext"] == {ACTION_KEY: [action_context(A1, MID, status="Succeeded"),
                                                   action_context(A2, MID2, status="InProgress")]}

    # Round 3: everything final: the outcome per machine, and no further run.
    frozen_clock.advance(10)
    status_poll(requests_mock, action(A2, MID2, status="Failed"), action(A1, MID, status="Succeeded"))
    third = xsoar.run(ISOLATE, args=second["PollingArgs"]).entry

    assert "PollingCommand" not in third
    assert third["EntryContext"] == {ACTION_KEY: [action_context(A1, MID, status="Succeeded"),
                                                  action_context(A2, MID2, status="Failed")]}
    readable = third["HumanReadable"]
    assert readable.startswith("### Machine action results\n|Machine|Action ID|Type|Status|Pre-existing|Details|")
    assert f"|desktop-1.contoso.com|{A1}|Isolate|Succeeded|no||" in readable
    assert f"|server-2.contoso.com|{A2}|Isolate|Failed|no||" in readable
    assert len(api_calls(requests_mock)) == 4


def test_polling_respects_interval_and_timeout_arguments(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/unisolate", status_code=201, json=action(type_="Unisolate"))

    entry = xsoar.run("microsoft-atp-unisolate-machine", args={
        "machine_id": MID, "comment": "release", "interval_in_seconds": "30", "timeout_in_seconds": "900"}).entry

    assert (entry["NextRun"], entry["Timeout"]) == ("30", "900")
    assert entry["PollingArgs"]["action_ids"] == A1


def test_polling_stops_when_the_next_round_would_pass_the_timeout(xsoar, requests_mock):
    status_poll(requests_mock, action(A1, status="InProgress"))
    args = {"machine_id": MID, "comment": "contain", "isolation_type": "Full", "action_ids": A1,
            "polling_started": str(NOW - 595)}

    entry = xsoar.run(ISOLATE, args=args).entry

    assert "PollingCommand" not in entry
    assert entry["EntryContext"] == {ACTION_KEY: [action_context(status="InProgress")]}
    assert ("Stopped waiting after 595 s (timeout_in_seconds=600); still pending: Isolate on desktop-1.contoso.com "
            f"(InProgress). Check later with !microsoft-atp-list-machine-actions-details id={A1}"
            ) in entry["HumanReadable"]


def test_microsoft_timeout_and_cancel_are_final_statuses(xsoar, requests_mock):
    status_poll(requests_mock, action(A1, status="TimeOut"), action(A2, MID2, status="Cancelled"))

    entry = xsoar.run(ISOLATE, args={"machine_id": f"{MID},{MID2}", "comment": "c", "isolation_type": "Full",
                                     "action_ids": f"{A1},{A2}"}).entry

    assert "PollingCommand" not in entry
    assert [a["Status"] for a in entry["EntryContext"][ACTION_KEY]] == ["TimeOut", "Cancelled"]


def test_without_polling_the_actions_are_returned_at_once(xsoar, requests_mock):
    api = requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=201, json=action())

    entry = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "contain", "isolation_type": "Selective",
                                     "polling": "false"}).entry

    assert api.last_request.json() == {"Comment": "contain", "IsolationType": "Selective"}
    assert "PollingCommand" not in entry
    assert entry["EntryContext"] == {ACTION_KEY: [action_context()]}
    assert "Not waiting for completion (polling=false)" in entry["HumanReadable"]


def test_a_polled_action_that_disappeared_is_reported(xsoar, requests_mock):
    status_poll(requests_mock, action(A1, status="Succeeded"))

    run = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "c", "isolation_type": "Full",
                                   "action_ids": f"{A1},{A3}"})
    entry, warning = run.results

    assert entry["EntryContext"] == {ACTION_KEY: [action_context(status="Succeeded"), {
        "MachineID": "", "Type": "Isolate", "Status": "Failed", "Error": f"Machine action {A3} was not found.",
        "PreExisting": False}]}
    assert f"Machine action {A3} was not found." in entry["HumanReadable"]
    assert warning["Type"] == 11 and "failed for 1 of 2 machines" in warning["Contents"]


def test_polling_fails_when_no_polled_action_exists(xsoar, requests_mock):
    status_poll(requests_mock)

    error = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "c", "isolation_type": "Full",
                                     "action_ids": A3}).error

    assert f"Machine action {A3} was not found." in error


# ---- pending actions are reused, never duplicated ------------------------------------------------


@pytest.mark.parametrize("error", [
    ERROR_PENDING,
    {"error": {"code": "BadRequest", "message": "Action is already in progress"}},
    {"error": {"code": "BadRequest", "message": "There is a pending machine action of this type"}},
])
def test_an_already_pending_action_is_returned_instead_of_failing(xsoar, requests_mock, error):
    post = requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=400, json=error)
    older = action(A2, creationDateTimeUtc="2024-05-01T09:00:00Z", status="InProgress")
    newest = action(A1, creationDateTimeUtc="2024-05-01T09:30:00.5Z")
    undated = action(A3, creationDateTimeUtc=None)
    lookup = status_poll(requests_mock, older, newest, undated)

    entry = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "contain", "isolation_type": "Full"}).entry

    assert post.call_count == 1
    assert query(lookup.last_request)["$filter"] == [
        f"machineId eq '{MID}' and type eq 'Isolate' and status in ('Pending', 'InProgress')"]
    assert entry["EntryContext"] == {ACTION_KEY: [action_context(
        A1, preexisting=True, CreationDateTimeUtc="2024-05-01T09:30:00.5Z")]}
    assert f"|desktop-1.contoso.com|{A1}|Isolate|Pending|yes|An action of this type was already pending" \
           in entry["HumanReadable"]
    assert entry["PollingArgs"]["preexisting_action_ids"] == A1


def test_the_pre_existing_mark_survives_polling_rounds(xsoar, requests_mock):
    status_poll(requests_mock, action(A1, status="Succeeded"), action(A2, MID2, status="Succeeded"))

    entry = xsoar.run(ISOLATE, args={"machine_id": f"{MID},{MID2}", "comment": "c", "isolation_type": "Full",
                                     "action_ids": f"{A1},{A2}", "preexisting_action_ids": A2,
                                     "polling_started": str(NOW)}).entry

    assert [a["PreExisting"] for a in entry["EntryContext"][ACTION_KEY]] == [False, True]


def test_a_pending_error_without_a_pending_action_is_reported(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=400, json=ERROR_PENDING)
    status_poll(requests_mock)

    error = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "c", "isolation_type": "Full"}).error

    assert "ActiveRequestAlreadyExists: Action is already in progress" in error


def test_other_bad_requests_are_not_taken_for_pending_actions(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=400,
                       json={"error": {"code": "OsPlatformNotSupported", "message": "Not supported on macOS"}})
    lookup = status_poll(requests_mock)

    error = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "c", "isolation_type": "Full"}).error

    assert "OsPlatformNotSupported: Not supported on macOS" in error
    assert not lookup.called


def test_a_failed_post_is_never_repeated(xsoar, requests_mock):
    post = requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=503, text="unavailable")
    lookup = status_poll(requests_mock)

    error = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "c", "isolation_type": "Full"}).error

    assert post.call_count == 1
    assert "HTTP 503" in error and "it was retried" not in error
    assert "No Isolate action exists for the machine since the request, so it was not created" in error
    assert "creationDateTimeUtc ge" in lookup.last_request.qs["$filter"][0].replace("datetimeutc", "DateTimeUtc")


@pytest.mark.parametrize("failure", [
    {"exc": requests.exceptions.ConnectionError("connection dropped after sending")},
    {"exc": requests.exceptions.ReadTimeout("no answer in time")},
    {"status_code": 502, "text": "bad gateway"},
    {"status_code": 201, "text": "<html>proxy</html>", "headers": {"Content-Type": "text/html"}},
    {"status_code": 201, "text": ""},
])
def test_an_ambiguous_write_reports_the_action_microsoft_created_and_never_repeats_it(xsoar, requests_mock, failure):
    post = requests_mock.post(f"{API}/machines/{MID}/isolate", **failure)
    status_poll(requests_mock, action(A1))

    entry = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "contain", "isolation_type": "Full",
                                     "polling": "false"}).entry

    assert post.call_count == 1
    assert entry["EntryContext"] == {ACTION_KEY: [action_context()]}
    assert "it was created once" in entry["HumanReadable"]


def test_an_ambiguous_write_does_not_claim_someone_elses_action(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/isolate", exc=requests.exceptions.ReadTimeout("no answer"))
    status_poll(requests_mock, action(A1))  # requested by someone else, with another comment

    error = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "our containment", "isolation_type": "Full",
                                     "polling": "false"}).error

    assert "so it was not created" in error and A1 not in error


def test_a_503_with_retry_after_was_not_processed_so_the_write_is_sent_again(xsoar, requests_mock):
    post = requests_mock.post(f"{API}/machines/{MID}/isolate", [
        {"status_code": 503, "headers": {"Retry-After": "5"}, "text": "busy"},
        {"status_code": 503, "headers": {"Retry-After": "5"}, "text": "busy"},
        {"status_code": 503, "headers": {"Retry-After": "5"}, "text": "busy"},
        {"status_code": 201, "json": action(A1)}])

    entry = xsoar.run(ISOLATE, args={"machine_id": MID, "comment": "c", "isolation_type": "Full",
                                     "polling": "false"}).entry

    assert post.call_count == 4 and xsoar.sleeps == [5.0, 5.0, 5.0]
    assert entry["EntryContext"] == {ACTION_KEY: [action_context()]}


# ---- several machines: partial failure ----------------------------------------------------------


def test_a_failure_on_one_machine_does_not_stop_the_others(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/runAntiVirusScan", status_code=400,
                       json={"error": {"code": "ClientVersionNotSupported", "message": "Sensor too old"}})
    scan = requests_mock.post(f"{API}/machines/{MID2}/runAntiVirusScan", status_code=201,
                              json=action(A2, MID2, "RunAntiVirusScan", scope="Quick"))

    run = xsoar.run("microsoft-atp-run-antivirus-scan", args={
        "machine_id": f"{MID},{MID2}", "comment": "scan", "scan_type": "quick"})
    entry = run.results[0]

    assert scan.last_request.json() == {"Comment": "scan", "ScanType": "Quick"}
    failure = {"MachineID": MID, "Type": "RunAntiVirusScan", "Status": "Failed", "PreExisting": False,
               "Error": f"POST /machines/{MID}/runAntiVirusScan failed with HTTP 400 ClientVersionNotSupported: "
                        "Sensor too old. Check the command arguments."}
    assert entry["EntryContext"] == {ACTION_KEY: [action_context(A2, MID2, "RunAntiVirusScan", Scope="Quick"),
                                                  failure]}
    assert entry["PollingArgs"]["action_ids"] == A2
    assert json.loads(entry["PollingArgs"]["failed_requests"]) == [[MID, failure["Error"]]]
    assert len(run.results) == 1  # the warning comes with the final round
    assert f"|{MID}|||Request failed|no|POST /machines/{MID}/runAntiVirusScan failed with HTTP 400 " \
           "ClientVersionNotSupported: Sensor too old" in entry["HumanReadable"]


def test_the_command_fails_when_every_machine_fails(xsoar, requests_mock):
    requests_mock.post(re.compile(f"{API}/machines/.*/runAntiVirusScan"), status_code=404,
                       json={"error": {"code": "ResourceNotFound", "message": "Machine was not found"}})

    error = xsoar.run("microsoft-atp-run-antivirus-scan", args={
        "machine_id": f"{MID},{MID2}", "comment": "scan", "scan_type": "Full"}).error

    assert error.startswith("RunAntiVirusScan failed for every machine:")
    assert f"- {MID}: POST /machines/{MID}/runAntiVirusScan failed with HTTP 404" in error
    assert f"- {MID2}: POST /machines/{MID2}/runAntiVirusScan failed with HTTP 404" in error


# ---- every action command: endpoint, body, context ----------------------------------------------

ACTION_COMMANDS = [
    # command, extra arguments, path, body, Microsoft's type
    ("microsoft-atp-isolate-machine", {"isolation_type": "UnManagedDevice"}, "isolate",
     {"Comment": "why", "IsolationType": "UnManagedDevice"}, "Isolate"),
    ("microsoft-atp-unisolate-machine", {}, "unisolate", {"Comment": "why"}, "Unisolate"),
    ("microsoft-atp-run-antivirus-scan", {"scan_type": "Full"}, "runAntiVirusScan",
     {"Comment": "why", "ScanType": "Full"}, "RunAntiVirusScan"),
    ("microsoft-atp-restrict-app-execution", {}, "restrictCodeExecution", {"Comment": "why"},
     "RestrictCodeExecution"),
    ("microsoft-atp-remove-app-restriction", {}, "unrestrictCodeExecution", {"Comment": "why"},
     "UnrestrictCodeExecution"),
    ("microsoft-atp-collect-investigation-package", {}, "collectInvestigationPackage", {"Comment": "why"},
     "CollectInvestigationPackage"),
    ("microsoft-atp-request-and-download-investigation-package", {}, "collectInvestigationPackage",
     {"Comment": "why"}, "CollectInvestigationPackage"),
]


@pytest.mark.parametrize("command, extra, endpoint, body, type_", ACTION_COMMANDS)
def test_each_action_command_posts_its_body_for_each_machine(xsoar, requests_mock, command, extra, endpoint, body,
                                                             type_):
    first = requests_mock.post(f"{API}/machines/{MID}/{endpoint}", status_code=201, json=action(A1, MID, type_))
    second = requests_mock.post(f"{API}/machines/{MID2}/{endpoint}", status_code=201, json=action(A2, MID2, type_))

    entry = xsoar.run(command, args={"machine_id": f"{MID},{MID2}", "comment": "why", "polling": "false",
                                     **extra}).entry

    assert first.last_request.json() == body
    assert second.last_request.json() == body
    assert entry["EntryContext"] == {ACTION_KEY: [action_context(A1, MID, type_), action_context(A2, MID2, type_)]}
    assert "PollingCommand" not in entry


@pytest.mark.parametrize("command, extra, endpoint, body, type_", ACTION_COMMANDS)
def test_each_action_command_polls_by_default(xsoar, requests_mock, command, extra, endpoint, body, type_):
    requests_mock.post(f"{API}/machines/{MID}/{endpoint}", status_code=201, json=action(A1, MID, type_))

    entry = xsoar.run(command, args={"machine_id": MID, "comment": "why", **extra}).entry

    assert entry["PollingCommand"] == command
    ids_arg = "machine_action_id" if "download" in command else "action_ids"
    assert entry["PollingArgs"][ids_arg] == A1


def test_restrict_app_execution_has_a_default_comment(xsoar, requests_mock):
    api = requests_mock.post(f"{API}/machines/{MID}/restrictCodeExecution", status_code=201,
                             json=action(type_="RestrictCodeExecution"))

    xsoar.run("microsoft-atp-restrict-app-execution", args={"machine_id": MID, "polling": "false"})

    assert api.last_request.json() == {"Comment": "App execution restricted from Cortex XSOAR."}


def test_stop_and_quarantine_requests_each_file_on_each_machine(xsoar, requests_mock):
    def created(request, context):
        context.status_code = 201
        machine_id = path(request).split("/")[3]
        sha1 = request.json()["Sha1"]
        action_id = {(MID, SHA1): A1, (MID, SHA1_B): A2, (MID2, SHA1): A3}.get((machine_id, sha1), A3)
        return action(action_id, machine_id, "StopAndQuarantineFile",
                      relatedFileInfo={"fileIdentifier": sha1, "fileIdentifierType": "Sha1"})

    api = requests_mock.post(re.compile(f"{API}/machines/.*/StopAndQuarantineFile"), json=created)

    entry = xsoar.run("microsoft-atp-stop-and-quarantine-file", args={
        "machine_id": f"{MID},{MID2}", "file_hash": f"{SHA1},{SHA1_B.upper()}", "comment": "bad file"}).entry

    assert [(path(r).split("/")[3], r.json()) for r in api.request_history] == [
        (MID, {"Comment": "bad file", "Sha1": SHA1}), (MID, {"Comment": "bad file", "Sha1": SHA1_B}),
        (MID2, {"Comment": "bad file", "Sha1": SHA1}), (MID2, {"Comment": "bad file", "Sha1": SHA1_B})]
    assert "PollingCommand" not in entry  # polling is off by default for this command, as before
    first = entry["EntryContext"][ACTION_KEY][0]
    assert first == action_context(A1, MID, "StopAndQuarantineFile", RelatedFileInfo={
        "FileIdentifier": SHA1, "FileIdentifierType": "Sha1"})
    assert f"File {SHA1}" in entry["HumanReadable"]


def test_stop_and_quarantine_reuses_the_pending_action_for_the_same_file(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/StopAndQuarantineFile", status_code=400, json=ERROR_PENDING)
    other_file = action(A2, type_="StopAndQuarantineFile", creationDateTimeUtc="2024-05-01T11:00:00Z",
                        relatedFileInfo={"fileIdentifier": SHA1_B, "fileIdentifierType": "Sha1"})
    same_file = action(A1, type_="StopAndQuarantineFile",
                       relatedFileInfo={"fileIdentifier": SHA1.upper(), "fileIdentifierType": "Sha1"})
    lookup = status_poll(requests_mock, other_file, same_file)

    entry = xsoar.run("microsoft-atp-stop-and-quarantine-file", args={
        "machine_id": MID, "file_hash": SHA1, "comment": "bad", "polling": "true"}).entry

    assert query(lookup.last_request)["$filter"] == [
        f"machineId eq '{MID}' and type eq 'StopAndQuarantineFile' and status in ('Pending', 'InProgress')"]
    assert [(a["ID"], a["PreExisting"]) for a in entry["EntryContext"][ACTION_KEY]] == [(A1, True)]
    assert entry["PollingArgs"]["action_ids"] == A1


def test_offboard_writes_the_offboard_context(xsoar, requests_mock):
    offboard = action(type_="Offboard", cancellationDateTimeUtc=None, troubleshootInfo="none",
                      lastUpdateDateTimeUtc=None, lastUpdateTimeUtc="2024-05-01T10:00:02Z")
    api = requests_mock.post(f"{API}/machines/{MID}/offboard", status_code=200, json=offboard)

    entry = xsoar.run("microsoft-atp-offboard-machine", args={"machine_id": MID, "comment": "retired"}).entry

    assert api.last_request.json() == {"Comment": "retired"}
    assert entry["EntryContext"] == {"MicrosoftATP.OffboardMachine(val.ID && val.ID == obj.ID)": [
        {**action_context(type_="Offboard"), "LastUpdateTimeUtc": "2024-05-01T10:00:02Z",
         "cancellationDateTimeUtc": None, "troubleshootInfo": "none"}]}
    assert entry["PollingCommand"] == "microsoft-atp-offboard-machine"


def test_offboard_reports_the_machine_it_could_not_offboard(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/offboard", status_code=400,
                       json={"error": {"code": "InvalidRequest", "message": "Already offboarded"}})
    requests_mock.post(f"{API}/machines/{MID2}/offboard", status_code=200, json=action(A2, MID2, "Offboard"))

    entry = xsoar.run("microsoft-atp-offboard-machine", args={"machine_id": f"{MID},{MID2}", "comment": "retired"}).entry

    assert entry["EntryContext"]["MicrosoftATP.OffboardMachine(val.ID && val.ID == obj.ID)"] == [
        {**action_context(A2, MID2, "Offboard"), "LastUpdateTimeUtc": "2024-05-01T10:00:01Z"},
        {"MachineID": MID, "Type": "Offboard", "Status": "Failed", "PreExisting": False,
         "Error": f"POST /machines/{MID}/offboard failed with HTTP 400 InvalidRequest: Already offboarded. "
                  "Check the command arguments."}]


ACTION_ARGS = {"machine_id": MID, "comment": "c", "isolation_type": "Full"}


@pytest.mark.parametrize("command, args, message", [
    (ISOLATE, {**ACTION_ARGS, "machine_id": "desktop-1"}, "machine_id must be a machine ID"),
    (ISOLATE, {**ACTION_ARGS, "machine_id": ""}, "machine_id is required"),
    (ISOLATE, {**ACTION_ARGS, "isolation_type": "Partial"}, "isolation_type must be one of Full, Selective"),
    (ISOLATE, {**ACTION_ARGS, "isolation_type": ""}, "isolation_type is required"),
    (ISOLATE, {**ACTION_ARGS, "comment": " "}, "comment is required"),
    (ISOLATE, {**ACTION_ARGS, "polling": "sometimes"}, "polling must be true or false"),
    (ISOLATE, {**ACTION_ARGS, "interval_in_seconds": "0"}, "interval_in_seconds must be at least 1"),
    (ISOLATE, {**ACTION_ARGS, "interval_in_seconds": "60", "timeout_in_seconds": "30"},
     "timeout_in_seconds must be at least 60"),
    (ISOLATE, {**ACTION_ARGS, "action_ids": "123"}, "action_ids must be a machine action ID"),
    ("microsoft-atp-run-antivirus-scan", {**ACTION_ARGS, "scan_type": "Deep"}, "scan_type must be one of Quick, Full"),
    ("microsoft-atp-stop-and-quarantine-file", {**ACTION_ARGS, "file_hash": "a" * 64}, "file_hash must be a SHA-1"),
    ("microsoft-atp-stop-and-quarantine-file", {**ACTION_ARGS, "file_hash": ""}, "file_hash is required"),
    ("microsoft-atp-request-and-download-investigation-package", {**ACTION_ARGS, "machine_action_id": "x"},
     "machine_action_id must be a machine action ID"),
])
def test_action_arguments_are_validated_before_any_call(xsoar, requests_mock, command, args, message):
    assert message in xsoar.run(command, args=args).error
    assert requests_mock.call_count == 0


# ---- investigation packages --------------------------------------------------------------------------

PACKAGE_URL = "https://userrequests-us.securitycenter.windows.com/safedownload/pkg.zip?token=abc"
DOWNLOAD = "microsoft-atp-request-and-download-investigation-package"


def test_request_and_download_returns_the_package_as_a_file(xsoar, requests_mock, frozen_clock):
    collect = requests_mock.post(f"{API}/machines/{MID}/collectInvestigationPackage", status_code=201,
                                 json=action(type_="CollectInvestigationPackage"))

    first = xsoar.run(DOWNLOAD, args={"machine_id": MID, "comment": "forensics"}).entry

    assert collect.last_request.json() == {"Comment": "forensics"}
    assert first["PollingArgs"] == {"machine_id": MID, "comment": "forensics", "machine_action_id": A1,
                                    "polling_started": str(NOW)}

    frozen_clock.advance(10)
    status_poll(requests_mock, action(type_="CollectInvestigationPackage", status="Succeeded"))
    uri = requests_mock.get(f"{API}/machineactions/{A1}/getPackageUri", json={"value": f'"{PACKAGE_URL}"'})
    package = requests_mock.get(PACKAGE_URL, content=b"PK\x03\x04package-bytes")

    run = xsoar.run(DOWNLOAD, args=first["PollingArgs"])

    assert uri.call_count == package.call_count == 1
    assert "Authorization" not in package.last_request.headers
    note, file = run.results
    assert note["EntryContext"] == {ACTION_KEY: [action_context(type_="CollectInvestigationPackage",
                                                                status="Succeeded")]}
    assert file == {"Type": 3, "File": f"{MID}_investigation_package.zip", "FileID": "file1", "Contents": "",
                    "ContentsFormat": "text"}
    with open(os.path.join(xsoar.tmp_path, "inv1_file1"), "rb") as handle:
        assert handle.read() == b"PK\x03\x04package-bytes"
    assert collect.call_count == 1


def test_request_and_download_fails_when_the_collection_failed(xsoar, requests_mock):
    status_poll(requests_mock, action(type_="CollectInvestigationPackage", status="Failed"))
    uri = requests_mock.get(f"{API}/machineactions/{A1}/getPackageUri", json={"value": PACKAGE_URL})

    error = xsoar.run(DOWNLOAD, args={"machine_id": MID, "comment": "x", "machine_action_id": A1}).error

    assert "No investigation package to download: CollectInvestigationPackage on desktop-1.contoso.com (Failed)" \
           in error
    assert not uri.called


def test_get_investigation_package_sas_uri_strips_stray_quotes(xsoar, requests_mock):
    api = requests_mock.get(f"{API}/machineactions/{A1}/getPackageUri", json={"value": f'"{PACKAGE_URL}"'})

    run = xsoar.run("microsoft-atp-get-investigation-package-sas-uri", args={"action_id": A1})

    assert api.call_count == 1
    assert run.context == {"MicrosoftATP.InvestigationURI(val.Link && val.Link == obj.Link)": {
        "Link": PACKAGE_URL, "ActionID": A1}}


def test_get_investigation_package_sas_uri_without_a_link_is_an_error(xsoar, requests_mock):
    requests_mock.get(f"{API}/machineactions/{A1}/getPackageUri", json={"value": '""'})

    error = xsoar.run("microsoft-atp-get-investigation-package-sas-uri", args={"action_id": A1}).error

    assert f"Microsoft returned no download link for the investigation package of action {A1}" in error


def test_get_investigation_package_sas_uri_reports_an_unfinished_collection(xsoar, requests_mock):
    requests_mock.get(f"{API}/machineactions/{A1}/getPackageUri", status_code=404,
                      json={"error": {"code": "NotFound", "message": "Package is not ready"}})

    error = xsoar.run("microsoft-atp-get-investigation-package-sas-uri", args={"action_id": A1}).error

    assert "HTTP 404 NotFound: Package is not ready" in error


def test_get_investigation_package_sas_uri_validates_the_action_id(xsoar, requests_mock):
    assert "action_id must be a machine action ID" in xsoar.run(
        "microsoft-atp-get-investigation-package-sas-uri", args={"action_id": "abc"}).error
    assert requests_mock.call_count == 0


# ---- listing and cancelling actions -------------------------------------------------------------------

CANCELLED = {"cancellationRequestor": "analyst@contoso.com", "cancellationComment": "mistake",
             "cancellationDateTimeUtc": "2024-05-01T10:05:00Z"}
CANCELLED_CONTEXT = {"CancellationRequestor": "analyst@contoso.com", "CancellationComment": "mistake",
                     "CancellationDateTimeUtc": "2024-05-01T10:05:00Z"}


def without_preexisting(context: dict) -> dict:
    return {key: value for key, value in context.items() if key != "PreExisting"}


def test_list_machine_actions_details_combines_every_filter(xsoar, requests_mock):
    quarantine = action(A2, type_="StopAndQuarantineFile", status="Succeeded",
                        relatedFileInfo={"fileIdentifier": SHA1, "fileIdentifierType": "Sha1"})
    api = status_poll(requests_mock, action(status="Cancelled", **CANCELLED), quarantine)

    run = xsoar.run("microsoft-atp-list-machine-actions-details", args={
        "id": A1, "status": "cancelled", "machine_id": f"{MID},{MID2}", "type": "isolate", "requestor": "o'hara",
        "filters": "creationDateTimeUtc gt 2024-04-01T00:00:00Z", "limit": "5"})

    assert query(api.last_request) == {"$filter": [
        f"id eq '{A1}' and status eq 'Cancelled' and machineId in ('{MID}', '{MID2}') and type eq 'Isolate' and "
        "requestor eq 'o''hara' and (creationDateTimeUtc gt 2024-04-01T00:00:00Z)"], "$top": ["5"], "$skip": ["0"]}
    assert run.context == {ACTION_KEY: [
        {**without_preexisting(action_context(status="Cancelled")), **CANCELLED_CONTEXT},
        without_preexisting(action_context(A2, type_="StopAndQuarantineFile", status="Succeeded", RelatedFileInfo={
            "FileIdentifier": SHA1, "FileIdentifierType": "Sha1"}))]}
    assert "|ID|Type|Status|MachineID|ComputerDNSName|" in run.entry["HumanReadable"]


def test_list_machine_actions_details_without_filters(xsoar, requests_mock):
    api = status_poll(requests_mock, {**action(), "lastUpdateDateTimeUtc": None,
                                      "lastUpdateTimeUtc": "2024-05-01T11:00:00Z"})

    run = xsoar.run("microsoft-atp-list-machine-actions-details", args={"limit": "50"})

    assert query(api.last_request) == {"$top": ["50"], "$skip": ["0"]}
    assert run.context[ACTION_KEY][0]["LastUpdateTimeUtc"] == "2024-05-01T11:00:00Z"


@pytest.mark.parametrize("args, message", [
    ({"filters": "   "}, "filters must be an OData clause as text"),
    ({"id": "42"}, "id must be a machine action ID"),
    ({"status": "Done"}, "status must be one of"),
    ({"type": "Reboot"}, "type must be one of"),
    ({"machine_id": "pc-1"}, "machine_id must be a machine ID"),
    ({"limit": "-1"}, "limit must be at least 1"),
])
def test_list_machine_actions_details_validates(xsoar, requests_mock, args, message):
    assert message in xsoar.run("microsoft-atp-list-machine-actions-details", args=args).error
    assert requests_mock.call_count == 0


def test_cancel_machine_action(xsoar, requests_mock):
    api = requests_mock.post(f"{API}/machineactions/{A1}/cancel",
                             json=action(status="Cancelled", **CANCELLED))

    run = xsoar.run("microsoft-atp-cancel-machine-action", args={"action_id": A1, "comment": "mistake"})

    assert api.last_request.json() == {"Comment": "mistake"}
    assert run.context == {ACTION_KEY: [{**without_preexisting(action_context(status="Cancelled")),
                                         **CANCELLED_CONTEXT}]}


def test_cancel_machine_action_reports_a_final_action(xsoar, requests_mock):
    requests_mock.post(f"{API}/machineactions/{A1}/cancel", status_code=400,
                       json={"error": {"code": "BadRequest", "message": "Action is already completed"}})

    error = xsoar.run("microsoft-atp-cancel-machine-action", args={"action_id": A1, "comment": "late"}).error

    assert "HTTP 400 BadRequest: Action is already completed" in error


@pytest.mark.parametrize("args, message", [
    ({"action_id": "abc", "comment": "c"}, "action_id must be a machine action ID"),
    ({"action_id": A1}, "comment is required"),
])
def test_cancel_machine_action_validates(xsoar, requests_mock, args, message):
    assert message in xsoar.run("microsoft-atp-cancel-machine-action", args=args).error
    assert requests_mock.call_count == 0


def test_a_machine_that_failed_in_the_first_round_stays_in_the_final_report(xsoar, requests_mock, frozen_clock):
    requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=404,
                       json={"error": {"code": "ResourceNotFound", "message": "Machine was not found"}})
    requests_mock.post(f"{API}/machines/{MID2}/isolate", status_code=201, json=action(A2, MID2))
    args = {"machine_id": f"{MID},{MID2},not-a-machine", "comment": "c", "isolation_type": "Full"}
    first = xsoar.run(ISOLATE, args=args).results[0]

    status_poll(requests_mock, action(A2, MID2, status="Succeeded"))
    frozen_clock.advance(10)
    final = xsoar.run(ISOLATE, args=first["PollingArgs"])
    entry, warning = final.results

    assert "PollingCommand" not in entry
    outcomes = {row.get("MachineID"): row for row in entry["EntryContext"][ACTION_KEY]}
    assert outcomes[MID2]["Status"] == "Succeeded"
    assert outcomes[MID]["Status"] == "Failed" and "HTTP 404" in outcomes[MID]["Error"]
    assert outcomes["not-a-machine"]["Status"] == "Failed" and "machine_id must be" in outcomes["not-a-machine"]["Error"]
    assert all(machine in entry["HumanReadable"] for machine in (MID, "not-a-machine"))
    assert warning["Type"] == 11 and "failed for 2 of 3 machines" in warning["Contents"]

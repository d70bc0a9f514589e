"""Live response and its library at the HTTP boundary, through main(): sessions polled to a final state entry by
entry, results delivered (script transcript, collected file), busy devices, failures per command, the library
(multipart upload parsed here), and hostile values in every path argument."""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import re
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from conftest import API, mock_entra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_machine_actions import A1, A2, NOW
from test_machines import MID

import demistomock

HOST = "desktop-1.contoso.com"
LR_KEY = "MicrosoftATP.LiveResponseAction(val.id && val.id == obj.id)"
LIBRARY_KEY = "MicrosoftATP.LibraryFile(val.FileName && val.FileName == obj.FileName)"
LINK = "https://lr.blob.core.windows.net/results/transcript?sv=2024&sig=abc"
HOSTS_PATH = "C:\\Windows\\System32\\drivers\\etc\\hosts"
RUN_SCRIPT = "microsoft-atp-live-response-run-script"
GET_FILE = "microsoft-atp-live-response-get-file"
PUT_FILE = "microsoft-atp-live-response-put-file"
PENDING_ERROR = {"error": {"code": "ActiveRequestAlreadyExists", "message": "Cannot create a new live response "
                                                                           "session: an active request exists.",
                          "target": "corr-1"}}


def command_record(index: int, kind: str, status: str = "Created", errors: list | None = None, **params) -> dict:
    done = status in ("Completed", "Failed")
    return {"index": index, "startTime": "2024-05-01T10:00:05Z" if done else None,
            "endTime": "2024-05-01T10:00:09Z" if done else None, "commandStatus": status, "errors": errors or [],
            "command": {"type": kind, "params": [{"key": k, "value": v} for k, v in params.items()]}}


def session(status: str = "Pending", commands: list | None = None, action_id: str = A1, **extra) -> dict:
    """A LiveResponse machine action as Microsoft returns it."""
    return {"id": action_id, "type": "LiveResponse", "title": None, "requestor": "xsoar-app",
            "requestorComment": "IR-7", "status": status, "machineId": MID, "computerDnsName": HOST,
            "creationDateTimeUtc": "2024-05-01T10:00:00.1234567Z", "lastUpdateDateTimeUtc": "2024-05-01T10:00:01Z",
            "cancellationRequestor": None, "cancellationComment": None, "cancellationDateTimeUtc": None,
            "errorHResult": 0, "scope": None, "externalId": None, "requestSource": "PublicApi",
            "relatedFileInfo": None, "troubleshootInfo": None,
            "commands": commands if commands is not None else [
                command_record(0, "RunScript", ScriptName="collect.ps1", Args="-Full")], **extra}


def script_session(status: str = "Pending", command_status: str = "Created") -> dict:
    return session(status, [command_record(0, "RunScript", command_status, ScriptName="collect.ps1", Args="-Full")])


TRANSCRIPT = {"script_name": "collect.ps1", "exit_code": 0, "script_output": "Processes: 142\n",
              "script_errors": ""}


@pytest.fixture(autouse=True)
def frozen_clock(xsoar, requests_mock):
    mock_entra(requests_mock)
    xsoar.clock.time = float(NOW)
    return xsoar.clock


def api_calls(requests_mock) -> list[str]:
    return [f"{r.method} {unquote(urlparse(r.url).path)}" for r in requests_mock.request_history
            if "/api/" in r.url or "blob.core" in r.url]


def status_poll(requests_mock, *actions):
    return requests_mock.get(f"{API}/machineactions", json={"value": list(actions)})


RUN_ARGS = {"machine_id": MID, "comment": "IR-7", "scriptName": "collect.ps1", "arguments": "-Full"}


# ---- the polling state machine, entry by entry ------------------------------------------------------------


def test_run_script_polls_the_session_then_delivers_the_transcript(xsoar, requests_mock, frozen_clock):
    start = requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=201, json=script_session())

    first = xsoar.run(RUN_SCRIPT, RUN_ARGS).entry
    assert start.last_request.json() == {"Comment": "IR-7", "Commands": [{"type": "RunScript", "params": [
        {"key": "ScriptName", "value": "collect.ps1"}, {"key": "Args", "value": "-Full"}]}]}
    assert first["PollingCommand"] == RUN_SCRIPT and first["NextRun"] == "10" and first["Timeout"] == "600"
    assert first["PollingArgs"]["machine_action_id"] == A1
    assert first["EntryContext"][LR_KEY][0]["status"] == "Pending"
    assert first["EntryContext"][LR_KEY][0]["PreExisting"] is False

    requests_mock.reset_mock()
    status_poll(requests_mock, script_session("InProgress"))
    frozen_clock.advance(10)
    second = xsoar.run(RUN_SCRIPT, first["PollingArgs"]).entry
    assert second["PollingCommand"] == RUN_SCRIPT
    assert api_calls(requests_mock) == ["GET /api/machineactions"]
    assert parse_qs(urlparse(requests_mock.last_request.url).query)["$filter"] == [f"id eq '{A1}'"]

    requests_mock.reset_mock()
    status_poll(requests_mock, script_session("Succeeded", "Completed"))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                      json={"value": LINK})
    requests_mock.get(LINK, json=TRANSCRIPT)
    frozen_clock.advance(10)
    last = xsoar.run(RUN_SCRIPT, second["PollingArgs"]).entry
    assert "PollingCommand" not in last
    assert api_calls(requests_mock) == [
        "GET /api/machineactions", f"GET /api/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
        "GET /results/transcript"]
    assert "Authorization" not in requests_mock.last_request.headers  # the link carries its own signature
    row = last["EntryContext"][LR_KEY][0]
    assert {k: row[k] for k in TRANSCRIPT} == TRANSCRIPT
    assert row["status"] == "Succeeded" and row["commands"][0]["commandStatus"] == "Completed"
    assert "exit code 0" in last["HumanReadable"] and "Processes: 142" in last["HumanReadable"]


def test_get_file_saves_the_downloaded_file_as_a_file_entry(xsoar, requests_mock, frozen_clock, tmp_path):
    get_file = [command_record(0, "GetFile", "Completed", Path=HOSTS_PATH)]
    start = requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=201,
                               json=session("Pending", [command_record(0, "GetFile", Path=HOSTS_PATH)]))
    first = xsoar.run(GET_FILE, {"machine_id": MID, "comment": "IR-7", "path": HOSTS_PATH}).entry
    assert start.last_request.json()["Commands"] == [{"type": "GetFile", "params": [
        {"key": "Path", "value": HOSTS_PATH}]}]
    assert b'"C:\\\\Windows\\\\System32' in start.last_request.body  # backslashes as they are, JSON-escaped

    status_poll(requests_mock, session("Succeeded", get_file))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                      json={"value": LINK})
    content = gzip.compress(b"127.0.0.1 localhost\n")
    requests_mock.get(LINK, content=content)
    frozen_clock.advance(10)
    run = xsoar.run(GET_FILE, first["PollingArgs"])
    note, entry = run.results
    assert note["EntryContext"][LR_KEY][0]["status"] == "Succeeded"
    assert entry == {"Type": 3, "File": "hosts.gz", "FileID": "file1", "Contents": "", "ContentsFormat": "text"}
    assert (tmp_path / "inv1_file1").read_bytes() == content


@pytest.mark.parametrize("path, data, name", [
    ("C:\\Temp\\a.exe", b"MZ\x90", "a.exe"),
    ("C:\\Temp\\a.exe", b"PK\x03\x04rest", "a.exe.zip"),
    ("/var/log/syslog", gzip.compress(b"x"), "syslog.gz"),
    ("C:\\Temp\\b.gz", gzip.compress(b"x"), "b.gz"),
])
def test_the_file_entry_is_named_after_the_file_and_its_container(xsoar, requests_mock, path, data, name):
    status_poll(requests_mock, session("Succeeded", [command_record(0, "GetFile", "Completed", Path=path)]))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                      json={"value": LINK})
    requests_mock.get(LINK, content=data)
    run = xsoar.run(GET_FILE, {"machine_id": MID, "comment": "c", "path": path, "machine_action_id": A1})
    assert run.results[1]["File"] == name


def test_put_file_polls_and_reports_where_the_file_went(xsoar, requests_mock, frozen_clock):
    put = [command_record(0, "PutFile", FileName="tool.exe")]
    start = requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=201, json=session("Pending", put))
    first = xsoar.run(PUT_FILE, {"machine_id": MID, "comment": "IR-7", "file_name": "tool.exe",
                                 "interval_in_seconds": "30", "timeout_in_seconds": "120"}).entry
    assert start.last_request.json()["Commands"] == [{"type": "PutFile", "params": [
        {"key": "FileName", "value": "tool.exe"}]}]
    assert first["NextRun"] == "30" and first["Timeout"] == "120"
    status_poll(requests_mock, session("Succeeded", [command_record(0, "PutFile", "Completed", FileName="tool.exe")]))
    frozen_clock.advance(30)
    last = xsoar.run(PUT_FILE, first["PollingArgs"]).entry
    assert "PollingCommand" not in last and "tool.exe is on desktop-1.contoso.com" in last["HumanReadable"]


def test_a_session_still_running_at_the_timeout_is_reported_with_how_to_check(xsoar, requests_mock, frozen_clock):
    status_poll(requests_mock, script_session("InProgress"))
    args = {**RUN_ARGS, "machine_action_id": A1, "polling_started": str(NOW - 595)}
    entry = xsoar.run(RUN_SCRIPT, args).entry
    assert "PollingCommand" not in entry
    assert f"!microsoft-atp-list-machine-actions-details id={A1}" in entry["HumanReadable"]
    assert api_calls(requests_mock) == ["GET /api/machineactions"]


def test_resuming_with_machine_action_id_starts_nothing(xsoar, requests_mock):
    status_poll(requests_mock, script_session("Pending"))
    entry = xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "machine_action_id": A1}).entry
    assert entry["PollingArgs"]["machine_action_id"] == A1
    assert api_calls(requests_mock) == ["GET /api/machineactions"]


def test_commands_missing_from_the_status_list_are_read_from_the_action(xsoar, requests_mock):
    status_poll(requests_mock, {**script_session("Succeeded"), "commands": []})
    full = requests_mock.get(f"{API}/machineactions/{A1}", json=script_session("Succeeded", "Completed"))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                      json={"value": LINK})
    requests_mock.get(LINK, json=TRANSCRIPT)
    entry = xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "machine_action_id": A1}).entry
    assert full.called and entry["EntryContext"][LR_KEY][0]["exit_code"] == 0


# ---- failures ------------------------------------------------------------------------------------------------


def test_a_failed_command_reports_microsofts_errors_and_the_skipped_commands(xsoar, requests_mock):
    failed = session("Failed", [
        command_record(0, "GetFile", "Failed", ["File not found: C:\\x.txt", "Access denied"], Path="C:\\x.txt"),
        command_record(1, "RunScript", "Created", ScriptName="collect.ps1")], errorHResult=-2147467259)
    status_poll(requests_mock, failed)
    error = xsoar.run(GET_FILE, {"machine_id": MID, "comment": "c", "path": "C:\\x.txt",
                                 "machine_action_id": A1}).error
    assert f"Live response session {A1} on {HOST} ended with status Failed (errorHResult -2147467259)" in error
    assert "command 0 (GetFile C:\\x.txt) failed: File not found: C:\\x.txt; Access denied" in error
    assert "command 1 (RunScript collect.ps1) was skipped because an earlier command failed" in error
    assert not any("Download" in call for call in api_calls(requests_mock))


@pytest.mark.parametrize("status, extra, expected", [
    ("TimeOut", {}, "ended with status TimeOut"),
    ("Cancelled", {"cancellationRequestor": "analyst@contoso.com", "cancellationComment": "wrong host"},
     "Cancelled by analyst@contoso.com: wrong host"),
])
def test_sessions_that_timed_out_or_were_cancelled_are_errors(xsoar, requests_mock, status, extra, expected):
    status_poll(requests_mock, {**script_session(status), **extra})
    error = xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "machine_action_id": A1}).error
    assert expected in error and "command 0 (RunScript collect.ps1 -Full) did not run (Created)" in error


def test_a_busy_device_is_reported_not_joined(xsoar, requests_mock):
    post = requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=400, json=PENDING_ERROR)
    other = session("InProgress", [command_record(0, "GetFile", Path="C:\\evil.exe")], action_id=A2)
    listing = status_poll(requests_mock, other)
    error = xsoar.run(RUN_SCRIPT, RUN_ARGS).error
    assert post.call_count == 1
    assert f"already has an active live response session {A2} (InProgress" in error
    assert "running: GetFile C:\\evil.exe" in error
    assert f"!microsoft-atp-live-response-cancel-action machine_action_id={A2}" in error
    assert f"!microsoft-atp-list-machine-actions-details id={A2}" in error
    query = parse_qs(urlparse(listing.last_request.url).query)["$filter"][0]
    assert f"machineId eq '{MID}'" in query and "type eq 'LiveResponse'" in query


def test_a_pending_session_running_the_same_command_is_followed(xsoar, requests_mock):
    post = requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=400, json=PENDING_ERROR)
    status_poll(requests_mock, script_session("Pending"))
    entry = xsoar.run(RUN_SCRIPT, RUN_ARGS).entry
    assert post.call_count == 1
    assert entry["EntryContext"][LR_KEY][0]["PreExisting"] is True
    assert entry["PollingArgs"]["machine_action_id"] == A1
    assert entry["PollingArgs"]["preexisting_action_ids"] == A1


def test_the_quota_429_is_waited_out_by_the_transport(xsoar, requests_mock):
    post = requests_mock.post(f"{API}/machines/{MID}/runliveresponse", [
        {"status_code": 429, "headers": {"Retry-After": "7"}, "json": {"error": {
            "code": "TooManyRequests", "message": "quota", "target": "x"}}},
        {"status_code": 201, "json": script_session()}])
    entry = xsoar.run(RUN_SCRIPT, RUN_ARGS).entry
    assert post.call_count == 2 and xsoar.sleeps == [7]
    assert entry["EntryContext"][LR_KEY][0]["id"] == A1


def test_other_errors_when_starting_are_reported(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=403, json={"error": {
        "code": "Forbidden", "message": "Missing Machine.LiveResponse", "target": "x"}})
    assert "Missing Machine.LiveResponse" in xsoar.run(RUN_SCRIPT, RUN_ARGS).error


def test_a_result_that_is_not_a_transcript_is_an_error(xsoar, requests_mock):
    status_poll(requests_mock, script_session("Succeeded", "Completed"))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                      json={"value": LINK})
    requests_mock.get(LINK, text="<html>oops</html>")
    assert "not the JSON transcript" in xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "machine_action_id": A1}).error


def test_an_expired_link_is_reported(xsoar, requests_mock):
    status_poll(requests_mock, script_session("Succeeded", "Completed"))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                      json={"value": LINK})
    requests_mock.get(LINK, status_code=403)
    assert "request a new one" in xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "machine_action_id": A1}).error


# ---- result and cancel ---------------------------------------------------------------------------------------


def test_result_of_a_run_script_command_fetches_a_fresh_link_each_time(xsoar, requests_mock):
    requests_mock.get(f"{API}/machineactions/{A1}", json=script_session("Succeeded", "Completed"))
    link = requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)",
                             json={"value": LINK})
    requests_mock.get(LINK, json=TRANSCRIPT)
    for _ in range(2):
        entry = xsoar.run("microsoft-atp-live-response-result", {"machine_action_id": A1,
                                                                  "command_index": "0"}).entry
        assert entry["EntryContext"][LR_KEY][0]["script_output"] == "Processes: 142\n"
    assert link.call_count == 2


def test_result_of_a_get_file_command_is_a_file(xsoar, requests_mock, tmp_path):
    requests_mock.get(f"{API}/machineactions/{A1}", json=session("Succeeded", [
        command_record(0, "PutFile", "Completed", FileName="x.ps1"),
        command_record(1, "GetFile", "Completed", Path=HOSTS_PATH)]))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=1)",
                      json={"value": LINK})
    requests_mock.get(LINK, content=gzip.compress(b"hosts"))
    run = xsoar.run("microsoft-atp-live-response-result", {"machine_action_id": A1, "command_index": "1"})
    assert run.results[1]["File"] == "hosts.gz"
    assert gzip.decompress((tmp_path / "inv1_file1").read_bytes()) == b"hosts"


@pytest.mark.parametrize("action, index, message", [
    (script_session("Succeeded", "Completed"), "1", "command_index 1 does not name a command"),
    ({**script_session("Succeeded", "Completed"), "type": "Isolate", "commands": []}, "0", "Isolate action"),
    (session("Failed", [command_record(0, "RunScript", "Failed", ["Script timed out"], ScriptName="s.ps1")]), "0",
     "has no result: its status is Failed (Script timed out)"),
])
def test_result_explains_why_there_is_nothing_to_download(xsoar, requests_mock, action, index, message):
    requests_mock.get(f"{API}/machineactions/{A1}", json=action)
    assert message in xsoar.run("microsoft-atp-live-response-result",
                                {"machine_action_id": A1, "command_index": index}).error
    assert not any("Download" in call for call in api_calls(requests_mock))


def test_cancel_action(xsoar, requests_mock):
    cancel = requests_mock.post(f"{API}/machineactions/{A1}/cancel", json=script_session("Cancelled"))
    entry = xsoar.run("microsoft-atp-live-response-cancel-action", {"machine_action_id": A1,
                                                                     "comment": "wrong host"}).entry
    assert cancel.last_request.json() == {"Comment": "wrong host"}
    assert "Cancelled" in entry["HumanReadable"] and entry["EntryContext"] == {}


# ---- library -------------------------------------------------------------------------------------------------


LIBRARY_RECORD = {"fileName": "collect.ps1", "sha256": "a" * 64, "description": "triage",
                  "creationTime": "2024-04-01T00:00:00Z", "lastUpdatedTime": "2024-04-02T00:00:00Z",
                  "createdBy": "analyst@contoso.com", "hasParameters": True, "parametersDescription": "-Full"}


def multipart_fields(request) -> dict[str, tuple[str | None, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + request.headers["Content-Type"].encode() + b"\r\n\r\n" + request.body)
    assert message.is_multipart()
    return {part.get_param("name", header="content-disposition"): (part.get_filename(),
                                                                     part.get_payload(decode=True))
            for part in message.iter_parts()}


def test_list_library_files(xsoar, requests_mock):
    requests_mock.get(f"{API}/libraryfiles", json={"value": [LIBRARY_RECORD, {**LIBRARY_RECORD,
                                                                               "fileName": "b.ps1"}]})
    run = xsoar.run("microsoft-atp-list-library-files", {"limit": "1"})
    assert run.context[LIBRARY_KEY] == [{
        "FileName": "collect.ps1", "Sha256": "a" * 64, "Description": "triage", "CreationTime": "2024-04-01T00:00:00Z",
        "LastUpdatedTime": "2024-04-02T00:00:00Z", "CreatedBy": "analyst@contoso.com", "HasParameters": True,
        "ParametersDescription": "-Full"}]


def test_upload_library_file_sends_a_multipart_form(xsoar, requests_mock, tmp_path):
    script = tmp_path / "upload" / "collect.ps1"
    script.parent.mkdir()
    script.write_bytes(b'Write-Output "hi"\r\n')
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(script),
                                                                            "name": "collect.ps1"})
    upload = requests_mock.post(f"{API}/libraryfiles", json=LIBRARY_RECORD)
    run = xsoar.run("microsoft-atp-upload-library-file", {
        "entry_id": "12@34", "description": "triage", "parameters_description": "-Full",
        "override_if_exists": "true"})
    fields = multipart_fields(upload.last_request)
    assert fields == {"File": ("collect.ps1", b'Write-Output "hi"\r\n'), "Description": (None, b"triage"),
                      "ParametersDescription": (None, b"-Full"), "HasParameters": (None, b"true"),
                      "OverrideIfExists": (None, b"true")}
    assert upload.last_request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert run.context[LIBRARY_KEY][0]["FileName"] == "collect.ps1"


def test_upload_without_options_sends_only_the_file_and_flags(xsoar, requests_mock, tmp_path):
    script = tmp_path / "x.sh"
    script.write_text("echo hi\n")
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(script), "name": "x.sh"})
    upload = requests_mock.post(f"{API}/libraryfiles", json={**LIBRARY_RECORD, "fileName": "x.sh"})
    xsoar.run("microsoft-atp-upload-library-file", {"entry_id": "1@2"})
    assert multipart_fields(upload.last_request) == {"File": ("x.sh", b"echo hi\n"), "HasParameters": (None, b"false"),
                                                     "OverrideIfExists": (None, b"false")}


def test_upload_of_an_existing_name_says_how_to_replace_it(xsoar, requests_mock, tmp_path):
    script = tmp_path / "collect.ps1"
    script.write_text("exit 0\n")
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(script),
                                                                            "name": "collect.ps1"})
    requests_mock.post(f"{API}/libraryfiles", status_code=400, json={"error": {
        "code": "BadRequest", "message": "A file named 'collect.ps1' already exists in the library.", "target": "x"}})
    assert "override_if_exists=true" in xsoar.run("microsoft-atp-upload-library-file", {"entry_id": "1@2"}).error


def test_upload_refuses_files_over_20_mb_before_any_call(xsoar, requests_mock, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(20 * 1024 * 1024 + 1)
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(big), "name": "big.bin"})
    assert "up to 20 MB" in xsoar.run("microsoft-atp-upload-library-file", {"entry_id": "1@2"}).error
    assert api_calls(requests_mock) == []


def test_upload_of_an_unknown_entry_names_the_argument(xsoar, requests_mock):
    def missing(entry_id):
        raise ValueError("Entry not found")
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", missing)
    error = xsoar.run("microsoft-atp-upload-library-file", {"entry_id": "99@1"}).error
    assert "entry_id '99@1' is not a file entry" in error and "Entry not found" in error
    assert api_calls(requests_mock) == []


def test_delete_library_file(xsoar, requests_mock):
    delete = requests_mock.delete(f"{API}/libraryfiles/my%20script.ps1", status_code=204)
    entry = xsoar.run("microsoft-atp-delete-library-file", {"file_name": "my script.ps1"}).entry
    assert delete.called and "Deleted my script.ps1" in entry["HumanReadable"]


# ---- arguments -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, args, name", [
    (RUN_SCRIPT, {**RUN_ARGS, "comment": " "}, "comment"),
    (RUN_SCRIPT, {**RUN_ARGS, "machine_id": "nope"}, "machine_id"),
    (RUN_SCRIPT, {**RUN_ARGS, "machine_id": f"{MID},{MID}"}, "machine_id"),
    (RUN_SCRIPT, {**RUN_ARGS, "scriptName": "..\\evil.ps1"}, "scriptName"),
    (RUN_SCRIPT, {**RUN_ARGS, "scriptName": "a" * 256}, "scriptName"),
    (RUN_SCRIPT, {**RUN_ARGS, "arguments": "x" * 2049}, "arguments"),
    (RUN_SCRIPT, {**RUN_ARGS, "arguments": "a\nb"}, "arguments"),
    (RUN_SCRIPT, {**RUN_ARGS, "interval_in_seconds": "0"}, "interval_in_seconds"),
    (GET_FILE, {"machine_id": MID, "comment": "c", "path": " "}, "path"),
    (GET_FILE, {"machine_id": MID, "comment": "c", "path": "C:\\" + "a" * 1024}, "path"),
    (GET_FILE, {"machine_id": MID, "comment": "c", "path": "C:\\a\x00.exe"}, "path"),
    (PUT_FILE, {"machine_id": MID, "comment": "c", "file_name": "dir/tool.exe"}, "file_name"),
    (PUT_FILE, {"machine_id": MID, "comment": "c", "file_name": "100%.exe"}, "file_name"),
    ("microsoft-atp-live-response-result", {"machine_action_id": "x", "command_index": "0"}, "machine_action_id"),
    ("microsoft-atp-live-response-result", {"machine_action_id": A1, "command_index": "-1"}, "command_index"),
    ("microsoft-atp-live-response-result", {"machine_action_id": A1, "command_index": "one"}, "command_index"),
    ("microsoft-atp-live-response-cancel-action", {"machine_action_id": A1}, "comment"),
    ("microsoft-atp-delete-library-file", {"file_name": ".."}, "file_name"),
    ("microsoft-atp-list-library-files", {"limit": "0"}, "limit"),
])
def test_arguments_are_validated_before_any_call(xsoar, requests_mock, command, args, name):
    assert name in xsoar.run(command, args).error
    assert api_calls(requests_mock) == []


PATH_ARGUMENTS = [
    (RUN_SCRIPT, "machine_id", {"comment": "c", "scriptName": "s.ps1"}, "machines/{}/runliveresponse"),
    ("microsoft-atp-live-response-result", "machine_action_id", {"command_index": "0"}, "machineactions/{}"),
    ("microsoft-atp-live-response-result", "command_index", {"machine_action_id": A1}, None),
    ("microsoft-atp-live-response-cancel-action", "machine_action_id", {"comment": "c"}, "machineactions/{}/cancel"),
    ("microsoft-atp-delete-library-file", "file_name", {}, "libraryfiles/{}"),
]
HOSTILE = st.one_of(st.text(max_size=60), st.sampled_from(
    [".", "..", "a/b", "x?y=1", "x#y", "%2e%2e", "../machines", "0)/../x", A1 + "/..", MID + "/../..", "\x00",
     "a\\..\\b", "1; DROP", " "]))


@pytest.mark.parametrize("command, arg, others, template", PATH_ARGUMENTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=HOSTILE)
def test_hostile_path_values_never_leave_their_segment(xsoar, requests_mock, command, arg, others, template, value):
    requests_mock.reset_mock()
    requests_mock.register_uri(re.compile(".*"), re.compile(rf"^{re.escape(API)}/"), status_code=404,
                               json={"error": {"code": "ResourceNotFound", "message": "no", "target": "x"}})
    run = xsoar.run(command, {**others, arg: value})
    paths = [urlparse(r.url).path.removeprefix("/api/") for r in requests_mock.request_history if "/api/" in r.url]
    if not paths:
        assert run.errors  # refused before any request
        return
    if template is None:  # the index is an integer: only the documented function-call form may appear
        assert all(re.fullmatch(rf"machineactions/{A1}(/GetLiveResponseResultDownloadLink\(index=\d+\))?", p)
                   for p in paths), paths
        return
    prefix, suffix = template.split("{}")
    for path in paths:
        assert path.startswith(prefix) and path.endswith(suffix), path
        segment = path[len(prefix):len(path) - len(suffix)]
        assert segment and "/" not in segment and unquote(segment) not in (".", ".."), path


def test_without_polling_the_started_session_is_returned_at_once(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/runliveresponse", status_code=201, json=script_session())
    entry = xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "polling": "false"}).entry
    assert "PollingCommand" not in entry and "Not waiting for completion" in entry["HumanReadable"]
    assert api_calls(requests_mock) == [f"POST /api/machines/{MID}/runliveresponse"]


def test_a_missing_download_link_is_an_error(xsoar, requests_mock):
    status_poll(requests_mock, script_session("Succeeded", "Completed"))
    requests_mock.get(f"{API}/machineactions/{A1}/GetLiveResponseResultDownloadLink(index=0)", json={"value": ""})
    assert "no download link for command 0" in xsoar.run(RUN_SCRIPT, {**RUN_ARGS, "machine_action_id": A1}).error


def test_upload_of_an_entry_without_a_readable_file(xsoar, requests_mock, tmp_path):
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(tmp_path / "gone"),
                                                                            "name": "gone"})
    assert "does not lead to a readable file" in xsoar.run("microsoft-atp-upload-library-file",
                                                           {"entry_id": "1@2"}).error
    assert api_calls(requests_mock) == []


def test_other_upload_refusals_are_reported_as_microsoft_gives_them(xsoar, requests_mock, tmp_path):
    script = tmp_path / "a.ps1"
    script.write_text("exit 0\n")
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(script), "name": "a.ps1"})
    requests_mock.post(f"{API}/libraryfiles", status_code=403, json={"error": {
        "code": "Forbidden", "message": "Missing Library.Manage", "target": "x"}})
    error = xsoar.run("microsoft-atp-upload-library-file", {"entry_id": "1@2"}).error
    assert "Missing Library.Manage" in error and "override_if_exists" not in error


def test_the_local_runtime_resolves_file_entries_as_paths_from_where_the_cli_ran(tmp_path, monkeypatch):
    from xsoar_local.runtime import Runtime

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "collect.ps1").write_text("exit 0\n")
    monkeypatch.chdir(tmp_path)
    runtime = Runtime(workdir=tmp_path / "work")
    monkeypatch.chdir(tmp_path / "scripts")  # the CLI runs the plugin elsewhere; the user's path still counts
    assert runtime.get_file_path("scripts/collect.ps1") == {"path": str(tmp_path / "scripts" / "collect.ps1"),
                                                            "name": "collect.ps1"}
    with pytest.raises(ValueError, match="no file at"):
        runtime.get_file_path("scripts/missing.ps1")

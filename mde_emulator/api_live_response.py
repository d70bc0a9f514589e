"""Defender API: live response sessions (runliveresponse, results, download links) and the script library.

A session is a machine action of type LiveResponse whose `commands` run one after another on the emulator's
clock: Pending, InProgress after half the configured action delay, then each command completes (or fails) in
turn over the second half. When a command fails the later ones are skipped (they stay `Created`) and the
action is Failed. The session's plan lives in the shared action store (`api_actions`), so
`GET /machineactions/{id}` and `POST /machineactions/{id}/cancel` work on sessions as on any other action.

What a device holds: a few system files per platform, the files of the alert evidence seen on it, and whatever
PutFile copied there from the library. RunScript "runs" a library script by reading it: lines such as
`Write-Output "text"` / `echo text` become output, `Write-Error "text"` errors, and `exit N` the exit code;
`$args` (or `$1`) is replaced by the Args parameter.
"""

from __future__ import annotations

import collections
import datetime as dt
import email.parser
import email.policy
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .common import check_body, get_action, get_machine, link_refused, signed_link
from .odata import BOOL, DATETIME, STR, Schema, format_datetime
from .web import ApiError, Request, Response, Route, entity, not_found, require_body, serve_collection

if TYPE_CHECKING:
    from .server import Emulator

LIVE_RESPONSE_ROLES = ("Machine.LiveResponse",)
RESULT_ROLES = ("Machine.Read.All", "Machine.ReadWrite.All", "Machine.LiveResponse")
LIBRARY_ROLES = ("Library.Manage",)
COMMAND_KEYS = {"PutFile": (("FileName",), ()), "RunScript": (("ScriptName",), ("Args",)),
                "GetFile": (("Path",), ())}
CALLS_PER_MINUTE = 10
MAX_CONCURRENT_SESSIONS = 25
LINK_LIFETIME = 1800  # seconds: a result link is valid 30 minutes
MAX_LIBRARY_FILE = 20 * 1024 * 1024
PUT_FILE_DIR = {"windows": "C:\\ProgramData\\Microsoft\\Windows Defender Advanced Threat Protection\\Downloads\\",
                "posix": "/tmp/"}
SYSTEM_FILES = {
    "windows": {
        "C:\\Windows\\System32\\drivers\\etc\\hosts": b"127.0.0.1 localhost\r\n::1 localhost\r\n",
        "C:\\Windows\\System32\\notepad.exe": b"MZ\x90\x00notepad",
        "C:\\Windows\\Temp\\setup.log": b"Setup completed.\r\n",
    },
    "posix": {"/etc/hosts": b"127.0.0.1 localhost\n", "/etc/os-release": b"NAME=\"Emulated\"\n",
              "/var/log/syslog": b"systemd[1]: Started Session 1.\n"},
}
LIBRARY = Schema(
    "LibraryFiles", ("fileName", "sha256", "description", "creationTime", "lastUpdatedTime", "createdBy",
                     "hasParameters", "parametersDescription"),
    filterable={"fileName": STR, "sha256": STR, "createdBy": STR, "hasParameters": BOOL, "creationTime": DATETIME,
                "lastUpdatedTime": DATETIME},
)
SEED_SCRIPTS = {
    "hello.ps1": ("Says hello; useful to check that live response works.", None,
                  'Write-Output "Hello from $env:COMPUTERNAME"\nWrite-Output "args: $args"\nexit 0\n'),
    "collect_triage.ps1": ("Lists running processes and network connections.", "-Verbose for more detail",
                           'Write-Output "Processes: 142"\nWrite-Output "Connections: 37"\n'
                           'Write-Error "Access denied to 2 processes"\nexit 0\n'),
    "failing.ps1": ("Always fails (for testing error handling).", None,
                    'Write-Error "Something went wrong"\nexit 3\n'),
}


@dataclass
class LiveResponseState:
    """What the emulator keeps beyond machine actions: the library, device files and the quota windows."""

    library: dict[str, dict] = field(default_factory=dict)  # file name (lower) -> record (+ "_content")
    device_files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # machine id -> path (lower) -> bytes
    results: dict[tuple[str, int], tuple[str, bytes]] = field(default_factory=dict)  # (action, index) -> result
    calls: dict[str, collections.deque] = field(default_factory=lambda: collections.defaultdict(collections.deque))


def _iso(seconds: float) -> str:
    return format_datetime(dt.datetime.fromtimestamp(seconds, dt.timezone.utc))


def state(emu: Emulator) -> LiveResponseState:
    store = emu.store
    with store.lock:
        current = getattr(store, "live_response", None)
        if current is None:
            current = store.live_response = LiveResponseState()
            created = _iso(emu.clock.now() - 86400 * 7)
            for name, (description, params, text) in SEED_SCRIPTS.items():
                _store_library_file(current, name, text.encode(), description=description,
                                    parameters=params, has_parameters=params is not None,
                                    created_by="secop2@contoso.example", when=created)
        return current


def _store_library_file(lr: LiveResponseState, name: str, content: bytes, *, description: str | None,
                        parameters: str | None, has_parameters: bool, created_by: str, when: str) -> dict:
    previous = lr.library.get(name.lower())
    record = {"fileName": name, "sha256": hashlib.sha256(content).hexdigest(), "description": description,
              "creationTime": previous["creationTime"] if previous else when, "lastUpdatedTime": when,
              "createdBy": created_by, "hasParameters": has_parameters, "parametersDescription": parameters,
              "_content": content}
    lr.library[name.lower()] = record
    return record


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}


# -- the device ----------------------------------------------------------------------------------------------------
def _family(machine: dict) -> str:
    return "windows" if machine["osPlatform"].startswith("Windows") else "posix"


def _path_key(machine: dict, path: str) -> str:
    return path.lower() if _family(machine) == "windows" else path


def _device_files(emu: Emulator, machine: dict) -> dict[str, bytes]:
    """Every file the device holds: system files, evidence files of its alerts, files put there."""
    store = emu.store
    family = _family(machine)
    files = {_path_key(machine, p): c for p, c in SYSTEM_FILES[family].items()}
    if family == "windows":
        for alert in list(store.alerts):
            if alert["machineId"] != machine["id"]:
                continue
            for ev in store.evidence.get(alert["id"], []):
                if ev["sha1"] and ev["filePath"] and ev["fileName"]:
                    files[f"{ev['filePath']}\\{ev['fileName']}".lower()] = (
                        b"MZ\x90\x00" + ev["sha1"].encode() + b"\x00" * 64)
    files.update(state(emu).device_files.get(machine["id"], {}))
    return files


def _script_output(record: dict, args: str, machine: dict) -> dict:
    output, errors, exit_code = [], [], 0
    for raw in record["_content"].decode("utf-8", "replace").splitlines():
        line = raw.strip().replace("$args", args).replace("$1", args)
        line = line.replace("$env:COMPUTERNAME", machine["computerDnsName"].split(".")[0].upper())
        match = re.match(r"^(Write-Output|Write-Host|echo|Write-Error)\s+(.*)$", line, re.IGNORECASE)
        if match:
            text = match.group(2).strip().strip("\"'")
            (errors if match.group(1).lower() == "write-error" else output).append(text)
        elif re.match(r"^exit\s+-?\d+$", line, re.IGNORECASE):
            exit_code = int(line.split()[1])
    return {"script_name": record["fileName"], "exit_code": exit_code,
            "script_output": "\n".join(output) + ("\n" if output else ""),
            "script_errors": "\n".join(errors) + ("\n" if errors else "")}


def _params(command: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in command["command"]["params"]}


def _run_command(emu: Emulator, action: dict, index: int) -> list[str]:
    """Run one command on the device; the errors it ends with (empty when it completed)."""
    machine = emu.store.machines_by_id.get(action["machineId"])
    lr = state(emu)
    command = action["commands"][index]
    kind, params = command["command"]["type"], _params(command)
    if kind == "GetFile":
        content = _device_files(emu, machine).get(_path_key(machine, params["Path"]))
        if content is None:
            return [f"File not found on the device: {params['Path']}"]
        name = re.split(r"[\\/]", params["Path"])[-1]
        lr.results[(action["id"], index)] = (f"{name}.gz", gzip.compress(content, mtime=0))
        return []
    name = params["FileName"] if kind == "PutFile" else params["ScriptName"]
    record = lr.library.get(name.lower())
    if record is None:
        return [f"The file '{name}' is not in the live response library."]
    if kind == "PutFile":
        target = PUT_FILE_DIR[_family(machine)] + record["fileName"]
        lr.device_files.setdefault(machine["id"], {})[_path_key(machine, target)] = record["_content"]
        return []
    transcript = _script_output(record, params.get("Args", ""), machine)
    lr.results[(action["id"], index)] = ("transcript.json", json.dumps(transcript).encode())
    return []


def advance_session(emu: Emulator, action: dict, plan: dict, now: float) -> bool:
    """Move a session along its timeline; True once it is final. Called by api_actions.advance_actions."""
    start, delay = plan["start"], plan["delay"]
    commands = action["commands"]
    if now >= start + delay / 2 and action["status"] == "Pending":
        action["status"] = "InProgress"
        action["lastUpdateDateTimeUtc"] = _iso(start + delay / 2)
    if plan["outcome"] == "TimeOut":
        if now < start + delay:
            return False
        action.update(status="TimeOut", lastUpdateDateTimeUtc=_iso(start + delay))
        return True
    step = delay / 2 / len(commands)
    while plan["next"] < len(commands):
        index = plan["next"]
        begin, end = start + delay / 2 + index * step, start + delay / 2 + (index + 1) * step
        if now < begin:
            return False
        commands[index]["startTime"] = commands[index]["startTime"] or _iso(begin)
        if now < end:
            return False
        errors = ["An error occurred while running the command on the device."] \
            if plan["outcome"] == "Failed" and index == 0 else _run_command(emu, action, index)
        commands[index].update(endTime=_iso(end), commandStatus="Failed" if errors else "Completed", errors=errors)
        action["lastUpdateDateTimeUtc"] = _iso(end)
        plan["next"] = index + 1
        if errors:
            action.update(status="Failed", errorHResult=-2147467259)
            return True
    action["status"] = "Succeeded"
    return True


# -- runliveresponse -------------------------------------------------------------------------------------------
def _validated_commands(body: dict) -> list[dict]:
    check_body(body, ("Commands", "Comment"))
    commands = body["Commands"]
    if not isinstance(commands, list) or not commands:
        raise ApiError(400, "InvalidRequestBody", "Commands must be a non-empty list.")
    checked = []
    for position, command in enumerate(commands):
        if not isinstance(command, dict) or set(command) - {"type", "params"}:
            raise ApiError(400, "InvalidRequestBody", f"Command {position} must be an object with 'type' and "
                                                      "'params'.")
        kind = command.get("type")
        if kind not in COMMAND_KEYS:
            raise ApiError(400, "InvalidRequestBody", f"Command type '{kind}' is invalid. Allowed values: "
                                                      f"{', '.join(COMMAND_KEYS)}.")
        params = command.get("params") or []
        if not isinstance(params, list) or not all(
                isinstance(p, dict) and set(p) == {"key", "value"} and isinstance(p["value"], str) for p in params):
            raise ApiError(400, "InvalidRequestBody", f"Command {position}: params must be a list of "
                                                      "{\"key\", \"value\"} objects with string values.")
        required, optional = COMMAND_KEYS[kind]
        check_body({p["key"]: p["value"] for p in params}, required, optional)
        checked.append({"type": kind, "params": [{"key": p["key"], "value": p["value"]} for p in params]})
    return checked


def _sessions(emu: Emulator) -> list[dict]:
    store = emu.store
    return [store.actions_by_id[i] for i in store.action_plans if store.actions_by_id[i]["type"] == "LiveResponse"]


def _check_quotas(emu: Emulator, app_id: str, now: float) -> None:
    calls = state(emu).calls[app_id]
    while calls and calls[0] <= now - 60:
        calls.popleft()
    if len(calls) >= CALLS_PER_MINUTE:
        wait = max(1, int(calls[0] + 60 - now + 0.999))
        raise ApiError(429, "TooManyRequests", f"API calls quota exceeded! Maximum allowed {CALLS_PER_MINUTE} per "
                                               f"00:01:00 for the key Destination+TenantID+AppID. You can send "
                                               f"requests again in {wait} seconds.", headers={"Retry-After": str(wait)})
    sessions = _sessions(emu)
    if len(sessions) >= MAX_CONCURRENT_SESSIONS:
        plans = emu.store.action_plans
        first_end = min(plans[s["id"]]["start"] + plans[s["id"]]["delay"] for s in sessions)
        wait = max(1, int(first_end - now + 0.999))
        raise ApiError(429, "TooManyRequests", f"The maximum of {MAX_CONCURRENT_SESSIONS} concurrent live response "
                                               "sessions has been reached. Try again when one has finished.",
                       headers={"Retry-After": str(wait)})
    calls.append(now)


def run_live_response(request: Request) -> Response:
    body = require_body(request)
    commands = _validated_commands(body)
    emu = request.emu
    store = emu.store
    state(emu)
    with store.lock:
        machine = get_machine(request)
        if any(s["machineId"] == machine["id"] for s in _sessions(emu)):
            raise ApiError(400, "ActiveRequestAlreadyExists",
                           "Cannot create a new live response session: an active request already exists for the "
                           "machine.")
        now = emu.clock.now()
        _check_quotas(emu, request.app_id, now)
        stamp = _iso(now)
        action = {
            "id": store.new_guid(), "type": "LiveResponse", "title": None, "requestor": request.requestor,
            "requestorComment": body["Comment"], "status": "Pending", "machineId": machine["id"],
            "computerDnsName": machine["computerDnsName"], "creationDateTimeUtc": stamp,
            "lastUpdateDateTimeUtc": stamp, "cancellationRequestor": None, "cancellationComment": None,
            "cancellationDateTimeUtc": None, "errorHResult": 0, "scope": None, "externalId": None,
            "requestSource": "PublicApi", "relatedFileInfo": None, "troubleshootInfo": None,
            "commands": [{"index": i, "startTime": None, "endTime": None, "commandStatus": "Created", "errors": [],
                          "command": c} for i, c in enumerate(commands)],
        }
        store.add_action(action, plan={"start": now, "delay": float(emu.faults.action_delay),
                                       "outcome": emu.faults.action_outcome, "next": 0, "advance": advance_session})
        return entity(request, "MachineActions", json.loads(json.dumps(action)), status=201)


# -- results ---------------------------------------------------------------------------------------------------
def result_link(request: Request) -> Response:
    action = get_action(request)
    try:
        index = int(request.params["index"])
    except ValueError:
        raise ApiError(400, "InvalidInput", f"'{request.params['index']}' is not a valid command index.") from None
    emu = request.emu
    if action["type"] != "LiveResponse" or not 0 <= index < len(action["commands"]):
        raise ApiError(404, "ResourceNotFound", f"Live response command {index} of action {action['id']} was not "
                                                "found.")
    if (action["id"], index) not in state(emu).results:
        raise ApiError(404, "ResourceNotFound", f"Live response command {index} of action {action['id']} has no "
                                                f"result ({action['commands'][index]['command']['type']}, "
                                                f"{action['commands'][index]['commandStatus']}).")
    return signed_link(emu, f"/download/liveresponse/{action['id']}/{index}", LINK_LIFETIME)


def download_result(request: Request) -> Response:
    """The short-lived link: no bearer token, the signature in the URL authorises it."""
    refused = link_refused(request)
    if refused:
        return refused
    try:
        result = state(request.emu).results.get((request.params["id"].lower(), int(request.params["index"])))
    except ValueError:
        result = None
    if result is None:
        return Response(404, b"", {"Content-Type": "application/xml"})
    name, content = result
    content_type = "application/json" if name.endswith(".json") else "application/octet-stream"
    return Response(200, content, {"Content-Type": content_type,
                                   "Content-Disposition": f'attachment; filename="{name}"'})


# -- library ---------------------------------------------------------------------------------------------------
def list_library(request: Request) -> Response:
    lr = state(request.emu)
    rows = [_public(r) for r in sorted(lr.library.values(), key=lambda r: r["fileName"].lower())]
    return serve_collection(request, rows, LIBRARY)


def _form_fields(request: Request) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data parts: name -> (file name, bytes)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "InvalidRequestBody", "The request must be multipart/form-data.")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body)
    if not message.is_multipart():
        raise ApiError(400, "InvalidRequestBody", "The multipart body could not be read.")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def _form_bool(fields: dict, name: str) -> bool:
    raw = fields.get(name, (None, b"false"))[1].decode().strip().lower()
    if raw not in ("true", "false"):
        raise ApiError(400, "InvalidInput", f"{name} must be true or false.")
    return raw == "true"


def upload_library_file(request: Request) -> Response:
    fields = _form_fields(request)
    unknown = set(fields) - {"File", "Description", "ParametersDescription", "HasParameters", "OverrideIfExists"}
    if unknown:
        raise ApiError(400, "InvalidRequestBody", f"Unknown form field(s): {', '.join(sorted(unknown))}.")
    if "File" not in fields or not fields["File"][0]:
        raise ApiError(400, "MissingRequiredParameter", "Missing required parameter 'File'.")
    file_name, content = fields["File"]
    if len(content) > MAX_LIBRARY_FILE:
        raise ApiError(400, "BadRequest", "The file is larger than the 20 MB limit of the live response library.")
    if re.search(r"[\\/:*?\"<>|]", file_name) or file_name in (".", ".."):
        raise ApiError(400, "InvalidInput", f"'{file_name}' is not a valid file name.")
    override, has_parameters = _form_bool(fields, "OverrideIfExists"), _form_bool(fields, "HasParameters")
    text = {n: fields[n][1].decode("utf-8", "replace") if n in fields else None
            for n in ("Description", "ParametersDescription")}
    emu = request.emu
    lr = state(emu)
    with emu.store.lock:
        if file_name.lower() in lr.library and not override:
            raise ApiError(400, "BadRequest", f"A file named '{file_name}' already exists in the library. Set "
                                              "OverrideIfExists to true to replace it.")
        record = _store_library_file(lr, file_name, content, description=text["Description"],
                                     parameters=text["ParametersDescription"],
                                     has_parameters=has_parameters or bool(text["ParametersDescription"]),
                                     created_by=request.requestor, when=_iso(emu.clock.now()))
    return entity(request, "LibraryFiles", _public(record))


def delete_library_file(request: Request) -> Response:
    emu = request.emu
    lr = state(emu)
    with emu.store.lock:
        if lr.library.pop(request.params["name"].lower(), None) is None:
            raise not_found("Library file", request.params["name"])
    return Response(204)


ROUTES = [
    Route("POST", "/api/machines/{id}/runliveresponse", run_live_response, "liveresponse", LIVE_RESPONSE_ROLES),
    Route("GET", "/api/machineactions/{id}/GetLiveResponseResultDownloadLink(index={index})", result_link,
          "machineactions", RESULT_ROLES),
    Route("GET", "/api/libraryfiles", list_library, "libraryfiles", LIBRARY_ROLES),
    Route("POST", "/api/libraryfiles", upload_library_file, "libraryfiles", LIBRARY_ROLES),
    Route("DELETE", "/api/libraryfiles/{name}", delete_library_file, "libraryfiles", LIBRARY_ROLES),
    Route("GET", "/download/liveresponse/{id}/{index}", download_result, "download"),
]

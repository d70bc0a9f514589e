"""Defender API: response actions on machines and their lifecycle, machine actions, investigation packages.

An action's life is driven by the emulator's clock: Pending, InProgress after half of the configured delay, then the
configured outcome after the full delay. `advance_actions` runs before every API request and applies the side
effects of succeeded actions (isolation state, offboarding).
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import SHA1_RE, check_body, get_action, get_machine, link_refused, signed_link
from .odata import DATETIME, STR, Schema, format_datetime
from .web import ApiError, Request, Response, Route, entity, require_body, serve_collection

if TYPE_CHECKING:
    from .server import Emulator

MACHINE_READ = ("Machine.Read.All", "Machine.ReadWrite.All")
FINAL = ("Succeeded", "Failed", "TimeOut", "Cancelled")
PACKAGE_LINK_LIFETIME = 1800

ACTION_FIELDS = (
    "id", "type", "title", "requestor", "requestorComment", "status", "machineId", "computerDnsName",
    "creationDateTimeUtc", "lastUpdateDateTimeUtc", "cancellationRequestor", "cancellationComment",
    "cancellationDateTimeUtc", "errorHResult", "scope", "externalId", "requestSource", "relatedFileInfo", "commands",
    "troubleshootInfo",
)
MACHINE_ACTIONS = Schema(
    "MachineActions", ACTION_FIELDS,
    filterable={"id": STR, "status": STR, "machineId": STR, "type": STR, "requestor": STR,
                "creationDateTimeUtc": DATETIME, "lastUpdateDateTimeUtc": DATETIME, "computerDnsName": STR,
                "scope": STR},
)


@dataclass(frozen=True)
class ActionKind:
    type: str
    roles: tuple[str, ...]
    required: tuple[str, ...] = ("Comment",)
    optional: tuple[str, ...] = ()
    choices: tuple[str, tuple[str, ...]] | None = None  # (body field, allowed values) that becomes `scope`
    status_code: int = 201
    unsupported_os: tuple[str, ...] = ()


ACTIONS = {
    "isolate": ActionKind("Isolate", ("Machine.Isolate",), optional=("IsolationType",),
                          choices=("IsolationType", ("Full", "Selective", "UnManagedDevice"))),
    "unisolate": ActionKind("Unisolate", ("Machine.Isolate",)),
    "restrictCodeExecution": ActionKind("RestrictCodeExecution", ("Machine.RestrictExecution",),
                                        unsupported_os=("Linux", "macOS")),
    "unrestrictCodeExecution": ActionKind("UnrestrictCodeExecution", ("Machine.RestrictExecution",),
                                          unsupported_os=("Linux", "macOS")),
    "runAntiVirusScan": ActionKind("RunAntiVirusScan", ("Machine.Scan",), required=("Comment", "ScanType"),
                                   choices=("ScanType", ("Quick", "Full"))),
    "collectInvestigationPackage": ActionKind("CollectInvestigationPackage", ("Machine.CollectForensics",)),
    "offboard": ActionKind("Offboard", ("Machine.Offboard",), status_code=200, unsupported_os=("Linux", "macOS")),
    "StopAndQuarantineFile": ActionKind("StopAndQuarantineFile", ("Machine.StopAndQuarantine",),
                                        required=("Comment", "Sha1")),
}
ALL_ACTION_ROLES = tuple(sorted({r for kind in ACTIONS.values() for r in kind.roles}))


def advance_actions(emu: Emulator) -> None:
    """Move non-final actions along their planned timeline and apply the effects of those that succeed."""
    store = emu.store
    if not store.action_plans:
        return
    now = emu.clock.now()
    with store.lock:
        for action_id, plan in list(store.action_plans.items()):
            action = store.actions_by_id[action_id]
            if "advance" in plan:  # e.g. a live response session, which moves command by command
                if plan["advance"](emu, action, plan, now):
                    del store.action_plans[action_id]
                continue
            elapsed = now - plan["start"]
            if elapsed >= plan["delay"]:
                action["status"] = plan["outcome"]
                action["lastUpdateDateTimeUtc"] = format_datetime(
                    dt.datetime.fromtimestamp(plan["start"] + plan["delay"], dt.timezone.utc))
                if plan["outcome"] == "Failed":
                    action["errorHResult"] = -2147024891
                del store.action_plans[action_id]
                if plan["outcome"] == "Succeeded":
                    _apply_effect(store, action)
            elif elapsed >= plan["delay"] / 2 and action["status"] == "Pending":
                action["status"] = "InProgress"
                action["lastUpdateDateTimeUtc"] = format_datetime(
                    dt.datetime.fromtimestamp(plan["start"] + plan["delay"] / 2, dt.timezone.utc))


def _apply_effect(store, action: dict) -> None:
    state = store.machine_state.get(action["machineId"])
    machine = store.machines_by_id.get(action["machineId"])
    if state is None or machine is None:
        return
    kind = action["type"]
    if kind == "Isolate":
        state["isolation"] = "Isolated"
        state["isolationType"] = action["scope"]
    elif kind == "Unisolate":
        state["isolation"] = "NotIsolated"
        state.pop("isolationType", None)
    elif kind == "RestrictCodeExecution":
        state["codeExecutionRestricted"] = True
    elif kind == "UnrestrictCodeExecution":
        state["codeExecutionRestricted"] = False
    elif kind == "Offboard":
        machine["healthStatus"] = "Inactive"
        machine["onboardingStatus"] = "CanBeOnboarded"
        state["offboarded"] = True


def machine_action(request: Request) -> Response:
    name = request.path.rstrip("/").rsplit("/", 1)[-1]
    kind = next(k for n, k in ACTIONS.items() if n.lower() == name.lower())
    body = require_body(request)
    check_body(body, kind.required, kind.optional)
    scope = None
    if kind.choices:
        field_name, allowed = kind.choices
        scope = body.get(field_name, allowed[0])
        if scope not in allowed:
            raise ApiError(400, "InvalidInput", f"{field_name} '{scope}' is invalid. Allowed values: "
                                                f"{', '.join(allowed)}.")
    related = None
    if kind.type == "StopAndQuarantineFile":
        if not isinstance(body["Sha1"], str) or not SHA1_RE.match(body["Sha1"]):
            raise ApiError(400, "InvalidHashValue", f"'{body['Sha1']}' is not a valid SHA-1 hash.")
        related = {"fileIdentifier": body["Sha1"].lower(), "fileIdentifierType": "Sha1"}
    emu = request.emu
    store = emu.store
    with store.lock:
        machine = get_machine(request)
        if machine["osPlatform"] in kind.unsupported_os:
            raise ApiError(400, "OsPlatformNotSupported",
                           f"{kind.type} is not supported for OS platform {machine['osPlatform']}.")
        for action_id in store.action_plans:
            other = store.actions_by_id[action_id]
            if other["machineId"] == machine["id"] and other["type"] == kind.type:
                raise ApiError(400, "ActiveRequestAlreadyExists", "Action is already in progress")
        start = emu.clock.now()  # kept exact: on a frozen clock, advancing by the delay ends the action
        now = dt.datetime.fromtimestamp(start, dt.timezone.utc)
        action = {
            "id": store.new_guid(), "type": kind.type, "title": None, "requestor": request.requestor,
            "requestorComment": body["Comment"], "status": "Pending", "machineId": machine["id"],
            "computerDnsName": machine["computerDnsName"], "creationDateTimeUtc": format_datetime(now),
            "lastUpdateDateTimeUtc": format_datetime(now), "cancellationRequestor": None,
            "cancellationComment": None, "cancellationDateTimeUtc": None, "errorHResult": 0, "scope": scope,
            "externalId": None, "requestSource": "PublicApi", "relatedFileInfo": related, "commands": [],
            "troubleshootInfo": None,
        }
        faults = emu.faults
        store.add_action(action, plan={"start": start, "delay": float(faults.action_delay),
                                       "outcome": faults.action_outcome})
        return entity(request, "MachineActions", dict(action), status=kind.status_code)


def start_investigation(request: Request) -> Response:
    body = require_body(request)
    check_body(body, ("Comment",))
    machine = get_machine(request)
    investigation = request.emu.store.start_investigation(machine, request.emu.clock.utcnow())
    return entity(request, "Investigations", investigation, status=201)


def list_actions(request: Request) -> Response:
    return serve_collection(request, list(request.emu.store.actions), MACHINE_ACTIONS)


def action_by_id(request: Request) -> Response:
    return entity(request, "MachineActions", get_action(request))


def cancel_action(request: Request) -> Response:
    body = require_body(request)
    check_body(body, ("Comment",))
    store = request.emu.store
    with store.lock:
        action = get_action(request)
        if action["id"] not in store.action_plans:
            raise ApiError(400, "BadRequest", f"Machine action {action['id']} cannot be cancelled because its status "
                                              f"is {action['status']}.")
        del store.action_plans[action["id"]]
        now = format_datetime(request.emu.clock.utcnow())
        action.update(status="Cancelled", cancellationRequestor=request.requestor,
                      cancellationComment=body["Comment"], cancellationDateTimeUtc=now, lastUpdateDateTimeUtc=now)
        return entity(request, "MachineActions", dict(action))


def package_uri(request: Request) -> Response:
    action = get_action(request)
    if action["type"] != "CollectInvestigationPackage" or action["status"] != "Succeeded":
        raise ApiError(404, "ResourceNotFound", f"Investigation package for action {action['id']} is not "
                                                "available.")
    return signed_link(request.emu, f"/download/package/{action['id']}", PACKAGE_LINK_LIFETIME)


def download_package(request: Request) -> Response:
    """The short-lived link from getPackageUri: no bearer token, the signature in the URL authorises it."""
    refused = link_refused(request)
    if refused:
        return refused
    emu = request.emu
    action_id = request.params["id"].lower()
    action = emu.store.actions_by_id.get(action_id)
    if action is None:
        return Response(404, b"", {"Content-Type": "application/xml"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", f"Investigation package for {action['computerDnsName']}\n")
        archive.writestr("Processes/processes.csv", "ProcessId,Name\n4,System\n612,lsass.exe\n")
        archive.writestr("Network connections/ActiveNetConnections.txt", "TCP 10.0.0.5:445 LISTENING\n")
    return Response(200, buffer.getvalue(), {"Content-Type": "application/zip",
                                             "Content-Disposition": f'attachment; filename="{action_id}.zip"'})


ROUTES = [
    Route("POST", f"/api/machines/{{id}}/{name}", machine_action, "machineactions", kind.roles)
    for name, kind in ACTIONS.items()
] + [
    Route("POST", "/api/machines/{id}/startInvestigation", start_investigation, "investigations",
          ("Alert.ReadWrite.All",)),
    Route("GET", "/api/machineactions", list_actions, "machineactions", MACHINE_READ),
    Route("GET", "/api/machineactions/{id}", action_by_id, "machineactions", MACHINE_READ),
    Route("POST", "/api/machineactions/{id}/cancel", cancel_action, "machineactions", ALL_ACTION_ROLES),
    Route("GET", "/api/machineactions/{id}/getPackageUri", package_uri, "machineactions", MACHINE_READ),
    Route("GET", "/download/package/{id}", download_package, "download"),
]

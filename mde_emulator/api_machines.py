"""Defender API: machines, their logged-on users, tags, find-by-IP and entity-to-machine lookups."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re

from .common import DOMAIN_RE, SHA1_RE, check_body, get_machine
from .odata import BOOL, DATETIME, INT, OBJ_LIST, STR, STR_LIST, Schema, parse_datetime
from .web import (
    ApiError,
    Request,
    Response,
    Route,
    collection,
    entity,
    require_body,
    serve_collection,
)

MACHINE_READ = ("Machine.Read.All", "Machine.ReadWrite.All")
MACHINE_WRITE = ("Machine.ReadWrite.All",)
USER_READ = ("User.Read.All",)

MACHINE_FIELDS = (
    "id", "computerDnsName", "firstSeen", "lastSeen", "osPlatform", "osVersion", "osProcessor", "version",
    "lastIpAddress", "lastExternalIpAddress", "agentVersion", "osBuild", "healthStatus", "deviceValue",
    "rbacGroupId", "rbacGroupName", "riskScore", "exposureLevel", "isAadJoined", "aadDeviceId", "machineTags",
    "defenderAvStatus", "onboardingStatus", "osArchitecture", "managedBy", "managedByStatus", "ipAddresses",
    "vmMetadata",
)
MACHINES = Schema(
    "Machines", MACHINE_FIELDS,
    filterable={"id": STR, "computerDnsName": STR, "version": STR, "deviceValue": STR, "aadDeviceId": STR,
                "machineTags": STR_LIST, "lastSeen": DATETIME, "firstSeen": DATETIME, "exposureLevel": STR,
                "onboardingStatus": STR, "lastIpAddress": STR, "lastExternalIpAddress": STR, "healthStatus": STR,
                "osPlatform": STR, "riskScore": STR, "rbacGroupId": INT, "rbacGroupName": STR, "isAadJoined": BOOL,
                "ipAddresses": OBJ_LIST},
    sub_fields={"ipAddresses": {"ipAddress": STR, "macAddress": STR, "type": STR, "operationalStatus": STR}},
)
USERS = Schema("Users", ("id", "accountName", "accountDomain", "accountSid", "firstSeen", "lastSeen", "logonTypes",
                         "isDomainAdmin", "isOnlyNetworkUser"),
               filterable={"id": STR, "accountName": STR, "accountDomain": STR, "firstSeen": DATETIME,
                           "lastSeen": DATETIME, "isDomainAdmin": BOOL})
MAX_DOMAIN_MACHINES = 500


def list_machines(request: Request) -> Response:
    return serve_collection(request, list(request.emu.store.machines), MACHINES)


def machine_by_id(request: Request) -> Response:
    return entity(request, "Machines", get_machine(request))


def logon_users(request: Request) -> Response:
    store = request.emu.store
    machine = get_machine(request)
    users = [store.users[name] for name in store.machine_users.get(machine["id"], []) if name in store.users]
    return serve_collection(request, users, USERS)


def tags(request: Request) -> Response:
    body = require_body(request)
    check_body(body, required=("Value", "Action"))
    value, action = body["Value"], body["Action"]
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "InvalidInput", "Value must be a non-empty string.")
    if action not in ("Add", "Remove"):
        raise ApiError(400, "InvalidInput", f"Action '{action}' is invalid. Allowed values are 'Add' and 'Remove'.")
    store = request.emu.store
    with store.lock:
        machine = get_machine(request)
        current = machine["machineTags"]
        if action == "Add" and value not in current:
            machine["machineTags"] = current + [value]
        elif action == "Remove":
            machine["machineTags"] = [t for t in current if t != value]
    return entity(request, "Machines", machine)


_FINDBYIP_ARG = re.compile(r"\s*(\w+)\s*=\s*('(?:[^']|'')*'|[^,]*)\s*(?:,|$)")


def find_by_ip(request: Request) -> Response:
    raw = request.params["args"]
    args = {m.group(1).lower(): m.group(2).strip() for m in _FINDBYIP_ARG.finditer(raw) if m.group(0).strip()}
    ip = args.get("ip", "").strip("'")
    stamp = args.get("timestamp", "").strip("'")
    if not ip or not stamp:
        raise ApiError(400, "InvalidInput", "Both 'ip' and 'timestamp' are required, e.g. "
                                            "findbyip(ip='10.0.0.1',timestamp=2024-01-01T00:00:00Z).")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ApiError(400, "InvalidIpAddress", f"'{ip}' is not a valid IP address.") from None
    try:
        when, _ = parse_datetime(stamp)
    except ValueError:
        raise ApiError(400, "InvalidInput", f"'{stamp}' is not a valid timestamp.") from None
    if when < request.emu.clock.utcnow() - dt.timedelta(days=30):
        raise ApiError(400, "InvalidInput", "The timestamp must be within the last 30 days.")
    machines = [m for m in list(request.emu.store.machines)
                if m["lastIpAddress"] == ip or any(a["ipAddress"] == ip for a in m["ipAddresses"])]
    return collection(request, "Machines", machines)


def _machines_with_evidence(request: Request, match) -> list[dict]:
    store = request.emu.store
    ids: list[str] = []
    for alert in list(store.alerts):
        if any(match(e) for e in store.evidence.get(alert["id"], ())) and alert["machineId"] not in ids:
            ids.append(alert["machineId"])
    return [store.machines_by_id[i] for i in ids if i in store.machines_by_id]


def file_machines(request: Request) -> Response:
    sha1 = request.params["sha1"]
    if not SHA1_RE.match(sha1):
        raise ApiError(400, "InvalidHashValue", f"'{sha1}' is not a valid SHA-1 hash.")
    sha1 = sha1.lower()
    return collection(request, "Machines", _machines_with_evidence(request, lambda e: e["sha1"] == sha1))


def domain_machines(request: Request) -> Response:
    domain = request.params["domain"].lower()
    if not DOMAIN_RE.match(domain):
        raise ApiError(400, "InvalidDomainName", f"'{domain}' is not a valid domain name.")
    found = _machines_with_evidence(request, lambda e: (e["url"] or "").lower() == domain)
    return collection(request, "Machines", found[:MAX_DOMAIN_MACHINES])


def user_machines(request: Request) -> Response:
    store = request.emu.store
    name = request.params["name"].lower()
    machines = [store.machines_by_id[mid] for mid, users in list(store.machine_users.items())
                if any(u.lower() == name for u in users)]
    return collection(request, "Machines", machines)


ROUTES = [
    Route("GET", "/api/machines", list_machines, "machines", MACHINE_READ),
    Route("GET", "/api/machines/findbyip({args})", find_by_ip, "machines", MACHINE_READ),
    Route("GET", "/api/machines/{id}", machine_by_id, "machines", MACHINE_READ),
    Route("GET", "/api/machines/{id}/logonusers", logon_users, "machines", USER_READ),
    Route("POST", "/api/machines/{id}/tags", tags, "machines", MACHINE_WRITE),
    Route("GET", "/api/files/{sha1}/machines", file_machines, "files", MACHINE_READ),
    Route("GET", "/api/domains/{domain}/machines", domain_machines, "domains", MACHINE_READ),
    Route("GET", "/api/users/{name}/machines", user_machines, "users", MACHINE_READ),
]

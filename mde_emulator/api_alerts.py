"""Defender API: alerts (list, get, update, create by reference, related entities) and automated investigations."""

from __future__ import annotations

import datetime as dt

from .common import DOMAIN_RE, SHA1_RE, check_body, check_ip, get_machine
from .odata import DATETIME, INT, STR, ODataError, Schema, format_datetime, parse_datetime, parse_options, project
from .web import ApiError, Request, Response, Route, collection, entity, not_found, require_body, serve_collection

ALERT_READ = ("Alert.Read.All", "Alert.ReadWrite.All")
ALERT_WRITE = ("Alert.ReadWrite.All",)
ALERT_FIELDS = (
    "id", "incidentId", "investigationId", "assignedTo", "severity", "status", "classification", "determination",
    "investigationState", "detectionSource", "detectorId", "category", "threatFamilyName", "title", "description",
    "alertCreationTime", "firstEventTime", "lastEventTime", "lastUpdateTime", "resolvedTime", "machineId",
    "computerDnsName", "rbacGroupName", "aadTenantId", "threatName", "mitreTechniques", "relatedUser", "comments",
)
ALERTS = Schema(
    "Alerts", ALERT_FIELDS,
    filterable={"id": STR, "alertCreationTime": DATETIME, "lastUpdateTime": DATETIME, "lastEventTime": DATETIME,
                "firstEventTime": DATETIME, "resolvedTime": DATETIME, "incidentId": INT, "investigationId": INT,
                "assignedTo": STR, "detectionSource": STR, "status": STR, "severity": STR, "category": STR,
                "machineId": STR, "computerDnsName": STR, "title": STR, "classification": STR,
                "determination": STR, "threatFamilyName": STR, "rbacGroupName": STR},
    expandable=("evidence",),
)
INVESTIGATIONS = Schema(
    "Investigations", ("id", "startTime", "endTime", "cancelledBy", "state", "statusDetails", "machineId",
                       "computerDnsName", "triggeringAlertId"),
    filterable={"id": STR, "startTime": DATETIME, "endTime": DATETIME, "state": STR, "machineId": STR,
                "computerDnsName": STR, "triggeringAlertId": STR},
)
STATUSES = ("New", "InProgress", "Resolved")
CLASSIFICATIONS = ("TruePositive", "InformationalExpectedActivity", "FalsePositive")
DETERMINATIONS = ("MultiStagedAttack", "MaliciousUserActivity", "CompromisedUser", "Malware", "Phishing",
                  "UnwantedSoftware", "Other", "SecurityTesting", "LineOfBusinessApplication",
                  "ConfirmedUserActivity", "ConfirmedActivity", "Clean", "NotMalicious", "InsufficientData")
REFERENCE_SEVERITIES = ("Low", "Medium", "High")
REFERENCE_CATEGORIES = ("General", "CommandAndControl", "Collection", "CredentialAccess", "DefenseEvasion",
                        "Discovery", "Exfiltration", "Exploit", "Execution", "InitialAccess", "LateralMovement",
                        "Malware", "Persistence", "PrivilegeEscalation", "Ransomware", "SuspiciousActivity")
UPDATE_FIELDS = ("status", "assignedTo", "classification", "determination", "comment")
FILE_FIELDS = ("sha1", "sha256", "md5", "globalPrevalence", "globalFirstObserved", "globalLastObserved", "size",
               "fileType", "isPeFile", "filePublisher", "fileProductName", "signer", "issuer", "signerHash",
               "isValidCertificate", "determinationType", "determinationValue")


def _with_evidence(request: Request):
    evidence = request.emu.store.evidence

    def render(alert: dict, opts) -> dict:
        if "evidence" in opts.expand:
            return {**alert, "evidence": evidence.get(alert["id"], [])}
        return alert
    return render


def serve_alerts(request: Request, alerts: list[dict]) -> Response:
    return serve_collection(request, alerts, ALERTS, _with_evidence(request))


def get_alert(request: Request) -> dict:
    alert = request.emu.store.alerts_by_id.get(request.params["id"])
    if alert is None:
        raise not_found("Alert", request.params["id"])
    return alert


def list_alerts(request: Request) -> Response:
    return serve_alerts(request, list(request.emu.store.alerts))


def machine_alerts(request: Request) -> Response:
    machine = get_machine(request)
    return serve_alerts(request, [a for a in list(request.emu.store.alerts) if a["machineId"] == machine["id"]])


def alert_by_id(request: Request) -> Response:
    alert = get_alert(request)
    try:
        opts = parse_options({k: v for k, v in request.query.items() if k.lower() in ("$expand", "$select")}, ALERTS)
    except ODataError as exc:
        raise ApiError(400, "ODataError", str(exc)) from None
    # Microsoft's single-alert response carries the evidence without $expand (the list needs $expand=evidence).
    with_evidence = {**alert, "evidence": request.emu.store.evidence.get(alert["id"], [])}
    return entity(request, "Alerts", project(with_evidence, opts))


def _canonical(value, allowed: tuple[str, ...], name: str) -> str:
    match = next((a for a in allowed if isinstance(value, str) and a.lower() == value.lower()), None)
    if match is None:
        raise ApiError(400, "InvalidInput", f"The value '{value}' is not valid for {name}. Allowed values: "
                                            f"{', '.join(allowed)}.")
    return match


def _validated_update(body: dict) -> dict:
    check_body(body, (), UPDATE_FIELDS)
    if not body:
        raise ApiError(400, "InvalidRequestBody", "Request body must contain at least one property to update.")
    update = dict(body)
    for name, allowed in (("status", STATUSES), ("classification", CLASSIFICATIONS),
                          ("determination", DETERMINATIONS)):
        if update.get(name) is not None:
            update[name] = _canonical(update[name], allowed, name)
    for name in ("assignedTo", "comment"):
        if update.get(name) is not None and not isinstance(update[name], str):
            raise ApiError(400, "InvalidInput", f"{name} must be a string.")
    return update


def _apply_update(alert: dict, update: dict, requestor: str, when: dt.datetime) -> None:
    now = format_datetime(when)
    for name in ("assignedTo", "classification", "determination"):
        if name in update:
            alert[name] = update[name]
    if "status" in update and update["status"] is not None:
        if update["status"] == "Resolved" and alert["status"] != "Resolved":
            alert["resolvedTime"] = now
        elif update["status"] != "Resolved":
            alert["resolvedTime"] = None
        alert["status"] = update["status"]
    if update.get("comment"):
        alert["comments"] = alert["comments"] + [{"comment": update["comment"], "createdBy": requestor,
                                                  "createdTime": now}]
    alert["lastUpdateTime"] = now


def update_alert(request: Request) -> Response:
    update = _validated_update(require_body(request))
    store = request.emu.store
    with store.lock:
        alert = get_alert(request)
        _apply_update(alert, update, request.requestor, request.emu.clock.utcnow())
        return entity(request, "Alerts", dict(alert))


def batch_update(request: Request) -> Response:
    body = require_body(request)
    ids = body.pop("alertIds", None)
    if not isinstance(ids, list) or not ids:
        raise ApiError(400, "MissingRequiredParameter", "Missing required parameter 'alertIds'.")
    update = _validated_update(body)
    store = request.emu.store
    with store.lock:
        missing = [i for i in ids if i not in store.alerts_by_id]
        if missing:
            raise not_found("Alert", str(missing[0]))
        now = request.emu.clock.utcnow()
        for alert_id in ids:
            _apply_update(store.alerts_by_id[alert_id], update, request.requestor, now)
    return Response(200)


def create_by_reference(request: Request) -> Response:
    body = require_body(request)
    fields = ("machineId", "severity", "title", "description", "recommendedAction", "eventTime", "reportId",
              "category")
    check_body(body, fields)
    severity = _canonical(body["severity"], REFERENCE_SEVERITIES, "severity")
    category = _canonical(body["category"], REFERENCE_CATEGORIES, "category")
    try:
        parse_datetime(str(body["eventTime"]))
    except ValueError:
        raise ApiError(400, "InvalidInput", f"'{body['eventTime']}' is not a valid eventTime.") from None
    store = request.emu.store
    with store.lock:
        machine = get_machine(request, str(body["machineId"]))
        existing = next((a for a in reversed(store.alerts) if a["machineId"] == machine["id"]
                         and a["title"] == body["title"] and a["status"] != "Resolved"), None)
        now = request.emu.clock.utcnow()
        if existing is not None:  # the service merges into an open alert with the same device and title
            existing["lastEventTime"] = existing["lastUpdateTime"] = format_datetime(now)
            return entity(request, "Alerts", dict(existing))
        alert = store.add_alert(created=now, visible_at=now, severity=severity, status="New", machine=machine,
                                title=body["title"], category=category, description=body["description"],
                                detection_source="CustomDetection")
        return entity(request, "Alerts", dict(alert))


# -- related entities --------------------------------------------------------------------------------------------
def _user_entity(store, name: str) -> dict | None:
    user = store.users.get(name.lower())
    if user is None:
        return None
    machines = [mid for mid, names in list(store.machine_users.items()) if name.lower() in names]
    return {**user, "mostPrevalentMachineId": machines[0] if machines else None,
            "leastPrevalentMachineId": machines[-1] if machines else None, "logOnMachinesCount": len(machines)}


def alert_user(request: Request) -> Response:
    alert = get_alert(request)
    related = alert.get("relatedUser")
    user = _user_entity(request.emu.store, related["userName"]) if related else None
    if user is None:
        raise ApiError(404, "ResourceNotFound", f"User for alert {alert['id']} was not found")
    return entity(request, "Users", user)


def alert_files(request: Request) -> Response:
    store = request.emu.store
    alert = get_alert(request)
    seen: dict[str, dict] = {}
    for ev in store.evidence.get(alert["id"], []):
        if ev["sha1"] and ev["sha1"] in store.files and ev["sha1"] not in seen:
            seen[ev["sha1"]] = {k: store.files[ev["sha1"]][k] for k in FILE_FIELDS}
    return collection(request, "Files", list(seen.values()))


def alert_ips(request: Request) -> Response:
    ips = dict.fromkeys(e["ipAddress"] for e in request.emu.store.evidence.get(get_alert(request)["id"], [])
                        if e["ipAddress"])
    return collection(request, "Ips", [{"id": ip} for ip in ips])


def alert_domains(request: Request) -> Response:
    hosts = dict.fromkeys(e["url"] for e in request.emu.store.evidence.get(get_alert(request)["id"], []) if e["url"])
    return collection(request, "Domains", [{"host": h} for h in hosts])


def alert_machine(request: Request) -> Response:
    return entity(request, "Machines", get_machine(request, get_alert(request)["machineId"]))


def _alerts_with_evidence(request: Request, match) -> Response:
    store = request.emu.store
    found = [a for a in list(store.alerts) if any(match(e) for e in store.evidence.get(a["id"], ()))]
    return serve_alerts(request, found)


def file_alerts(request: Request) -> Response:
    sha1 = request.params["sha1"]
    if not SHA1_RE.match(sha1):
        raise ApiError(400, "InvalidHashValue", f"'{sha1}' is not a valid SHA-1 hash.")
    return _alerts_with_evidence(request, lambda e: e["sha1"] == sha1.lower())


def get_file(request: Request) -> Response:
    key = request.params["sha1"].lower()
    record = request.emu.store.files.get(key) or next(
        (f for f in request.emu.store.files.values() if f["sha256"] == key), None)
    if record is None:
        raise not_found("File", request.params["sha1"])
    return entity(request, "Files", {k: record[k] for k in FILE_FIELDS if k != "md5"})


def ip_alerts(request: Request) -> Response:
    ip = check_ip(request.params["ip"])
    return _alerts_with_evidence(request, lambda e: e["ipAddress"] == ip)


def domain_alerts(request: Request) -> Response:
    domain = request.params["domain"].lower()
    if not DOMAIN_RE.match(domain):
        raise ApiError(400, "InvalidDomainName", f"'{domain}' is not a valid domain name.")
    return _alerts_with_evidence(request, lambda e: (e["url"] or "").lower() == domain)


def user_alerts(request: Request) -> Response:
    name = request.params["name"].lower()
    return serve_alerts(request, [a for a in list(request.emu.store.alerts)
                                  if a["relatedUser"] and a["relatedUser"]["userName"].lower() == name])


# -- investigations ----------------------------------------------------------------------------------------------
def list_investigations(request: Request) -> Response:
    return serve_collection(request, list(request.emu.store.investigations), INVESTIGATIONS)


def investigation_by_id(request: Request) -> Response:
    store = request.emu.store
    key = request.params["id"]
    record = store.investigations_by_id.get(key) or next(
        (i for i in list(store.investigations) if i["triggeringAlertId"] == key), None)
    if record is None:
        raise not_found("Investigation", key)
    return entity(request, "Investigations", record)


ROUTES = [
    Route("GET", "/api/alerts", list_alerts, "alerts", ALERT_READ),
    Route("GET", "/api/machines/{id}/alerts", machine_alerts, "machines", ALERT_READ),
    Route("POST", "/api/alerts/CreateAlertByReference", create_by_reference, "alerts", ALERT_WRITE),
    Route("POST", "/api/alerts/batchUpdate", batch_update, "alerts", ALERT_WRITE),
    Route("GET", "/api/alerts/{id}", alert_by_id, "alerts", ALERT_READ),
    Route("PATCH", "/api/alerts/{id}", update_alert, "alerts", ALERT_WRITE),
    Route("GET", "/api/alerts/{id}/user", alert_user, "alerts", ("User.Read.All",)),
    Route("GET", "/api/alerts/{id}/files", alert_files, "alerts", ("File.Read.All",)),
    Route("GET", "/api/alerts/{id}/ips", alert_ips, "alerts", ("Ip.Read.All",)),
    Route("GET", "/api/alerts/{id}/domains", alert_domains, "alerts", ("URL.Read.All",)),
    Route("GET", "/api/alerts/{id}/machine", alert_machine, "alerts", ("Machine.Read.All", "Machine.ReadWrite.All")),
    Route("GET", "/api/files/{sha1}", get_file, "files", ("File.Read.All",)),
    Route("GET", "/api/files/{sha1}/alerts", file_alerts, "files", ALERT_READ),
    Route("GET", "/api/ips/{ip}/alerts", ip_alerts, "ips", ALERT_READ),
    Route("GET", "/api/domains/{domain}/alerts", domain_alerts, "domains", ALERT_READ),
    Route("GET", "/api/users/{name}/alerts", user_alerts, "users", ALERT_READ),
    Route("GET", "/api/investigations", list_investigations, "investigations", ALERT_READ),
    Route("GET", "/api/investigations/{id}", investigation_by_id, "investigations", ALERT_READ),
]

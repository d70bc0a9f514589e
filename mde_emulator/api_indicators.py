"""Defender API: custom indicators (submit or update, list, get, delete, import, BatchDelete).

Rules the service applies and this module keeps:
- POST /api/indicators is an upsert: an indicator with the same type and value is updated in place (same id,
  `application` kept), anything else is created.
- At most 15,000 active (not expired) indicators per tenant; a create beyond that is refused, updates still work.
- Values are checked per type (InvalidHashValue, InvalidIpAddress, InvalidDomainName, InvalidUrl) and the action
  must suit the type (Warn for URLs and domains, BlockAndRemediate for files and certificates; Audit only with
  generateAlert).
- import takes at most 500 indicators (MaximumBatchSizeExceeded) and answers one result per item, failed ones
  included; BatchDelete takes at most 500 ids and deletes none when any is missing (404).
- An application holding Ti.ReadWrite but not Ti.ReadWrite.All sees, changes and deletes only the indicators it
  created; delegated (user) tokens see all of them.
- Quotas: import and BatchDelete are their own rate-limit families (`indicators_import`,
  `indicators_batchdelete`), so the import quota switch is
  POST /admin/faults {"rate_limit_per_minute": 30, "rate_limit_families": ["indicators_import"]}
  which answers 429 with Retry-After and Microsoft's quota message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .common import check_body
from .odata import BOOL, DATETIME, STR, STR_LIST, Schema, format_datetime, parse_datetime
from .web import ApiError, Request, Response, Route, entity, not_found, require_body, serve_collection

if TYPE_CHECKING:
    from .server import Emulator

TI_ROLES = ("Ti.ReadWrite", "Ti.ReadWrite.All")
TI_ALL = "Ti.ReadWrite.All"
MAX_ACTIVE = 15000
MAX_BATCH = 500
HASH_LENGTHS = {"FileSha1": 40, "FileSha256": 64, "FileMd5": 32, "CertificateThumbprint": 40}
NETWORK_TYPES = ("IpAddress", "DomainName", "Url")
TYPES = tuple(HASH_LENGTHS) + NETWORK_TYPES
ACTIONS = ("Allowed", "Audit", "Block", "BlockAndRemediate", "Warn")
LEGACY_ACTIONS = ("Alert", "AlertAndBlock")  # still in stored data and responses; refused on submit
ACTION_TYPES = {"Warn": ("Url", "DomainName"), "BlockAndRemediate": tuple(HASH_LENGTHS)}
SEVERITIES = ("Informational", "Low", "Medium", "High")
RBAC_GROUPS = {"UnassignedGroup": 0, "Servers": 4310, "Workstations": 4311, "Finance": 4312, "Engineering": 4313}
REQUIRED = ("indicatorValue", "indicatorType", "action", "title", "description")
OPTIONAL = ("application", "expirationTime", "severity", "recommendedActions", "rbacGroupNames", "educateUrl",
            "generateAlert", "externalID")
HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?:[a-zA-Z0-9_](?:[a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$")
FIELDS = (
    "id", "indicatorValue", "indicatorType", "action", "application", "source", "sourceType", "title",
    "creationTimeDateTimeUtc", "createdBy", "expirationTime", "lastUpdateTime", "lastUpdatedBy", "severity",
    "description", "recommendedActions", "rbacGroupNames", "rbacGroupIds", "generateAlert", "createdBySource",
    "createdByDisplayName", "externalID", "educateUrl", "mitreTechniques", "historicalDetection", "lookBackPeriod",
    "category",
)
INDICATORS = Schema(
    "Indicators", FIELDS,
    filterable={"application": STR, "createdByDisplayName": STR, "expirationTime": DATETIME, "generateAlert": BOOL,
                "title": STR, "rbacGroupNames": STR_LIST, "indicatorValue": STR, "indicatorType": STR,
                "creationTimeDateTimeUtc": DATETIME, "createdBy": STR, "action": STR, "severity": STR},
)
SEED_OWNER_APP = "6a2b7c1e-4f0d-4b8e-9a55-0c3d2e1f7a90"  # another application of the tenant
SEED_OWNER_USER = "secops@contoso.example"


class ItemError(Exception):
    """One indicator refused: the error code and message the service gives for it."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def api_error(self) -> ApiError:
        return ApiError(self.status, self.code, self.message)


@dataclass(frozen=True)
class Caller:
    """Who calls: the id recorded as creator, how the service names it, and whether it sees every indicator."""

    id: str
    display_name: str
    source_type: str  # AadApp or User
    sees_all: bool

    @classmethod
    def of(cls, request: Request) -> Caller:
        claims = request.claims
        if claims.get("upn"):
            return cls(claims["upn"], claims.get("name") or claims["upn"], "User", True)
        client = request.emu.identity.clients.get(request.app_id)
        name = f"mde-emulator {client.name} app" if client else request.app_id
        return cls(request.app_id, name, "AadApp", TI_ALL in (claims.get("roles") or []))

    def may_see(self, record: dict) -> bool:
        return self.sees_all or record["createdBy"] == self.id


def _now(emu: Emulator) -> dt.datetime:
    return emu.clock.utcnow()


def _is_active(record: dict, now_key: str) -> bool:
    expires = record["expirationTime"]
    return expires is None or _datetime_key(expires) > now_key


def _datetime_key(text: str) -> str:
    value, ticks = parse_datetime(text)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ticks:07d}"


# -----------------------------------------------------------------------------------------------------------------
# Validation of one submitted indicator
# -----------------------------------------------------------------------------------------------------------------
def _check_names(body: dict) -> None:
    try:
        check_body(body, REQUIRED, OPTIONAL)
    except ApiError as exc:  # in an import, one item's error is that item's failure
        raise ItemError(exc.status, exc.code, exc.message) from None


def _enum(value, allowed: tuple[str, ...], name: str) -> str:
    if isinstance(value, str) and value in allowed:
        return value
    raise ItemError(400, "InvalidInput", f"The value '{value}' is not valid for {name}. Allowed values: "
                                         f"{', '.join(allowed)}.")


def normalized_value(kind: str, value) -> str:
    """The value in the form the service matches on; raises ItemError with the type's validation code."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ItemError(400, "InvalidInput", "Recieved an empty or padded indicator value.")
    if kind in HASH_LENGTHS:
        if len(value) != HASH_LENGTHS[kind] or not HEX_RE.match(value):
            raise ItemError(400, "InvalidHashValue", f"'{value}' is not a valid {kind} value: expected "
                                                     f"{HASH_LENGTHS[kind]} hexadecimal characters.")
        return value.lower()
    if kind == "IpAddress":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            hint = " CIDR notation is not supported." if "/" in value else ""
            raise ItemError(400, "InvalidIpAddress", f"'{value}' is not a valid IP address.{hint}") from None
    if kind == "DomainName":
        if not DOMAIN_RE.match(value):
            raise ItemError(400, "InvalidDomainName", f"'{value}' is not a valid domain name.")
        return value.lower()
    if not _valid_url(value):
        raise ItemError(400, "InvalidUrl", f"'{value}' is not a valid URL.")
    return value


def _valid_url(value: str) -> bool:
    if any(c.isspace() for c in value) or len(value) > 2048:
        return False
    text = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme.lower() not in ("http", "https") or not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(DOMAIN_RE.match(host))


def _expiration(value, now: dt.datetime) -> str | None:
    if value is None:
        return None
    try:
        when, ticks = parse_datetime(value) if isinstance(value, str) else (None, 0)
    except ValueError:
        when = None
    if when is None:
        raise ItemError(400, "InvalidInput", f"expirationTime '{value}' is not a valid ISO 8601 date and time.")
    when += dt.timedelta(microseconds=ticks // 10)
    if when <= now:
        raise ItemError(400, "InvalidInput", f"expirationTime '{value}' is in the past; it must be in the future.")
    return format_datetime(when)


def _rbac_groups(value) -> list[str]:
    if value is None:
        return []
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ItemError(400, "InvalidInput", "rbacGroupNames must be a list of device group names.")
    unknown = [n for n in names if n not in RBAC_GROUPS]
    if unknown:
        raise ItemError(400, "InvalidInput", f"Device group(s) not found: {', '.join(unknown)}.")
    return names


def validated(body, now: dt.datetime) -> dict:
    """A submitted indicator checked as the service checks it, with its values in stored form."""
    if not isinstance(body, dict):
        raise ItemError(400, "InvalidRequestBody", "Each indicator must be a JSON object.")
    _check_names(body)
    kind = _enum(body["indicatorType"], TYPES, "indicatorType")
    action = _enum(body["action"], ACTIONS, "action")
    key = normalized_value(kind, body["indicatorValue"])
    if action in ACTION_TYPES and kind not in ACTION_TYPES[action]:
        raise ItemError(400, "InvalidInput", f"Action '{action}' is not supported for indicator type '{kind}'; it "
                                             f"applies to {', '.join(ACTION_TYPES[action])}.")
    generate_alert = body.get("generateAlert", False)
    if not isinstance(generate_alert, bool):
        raise ItemError(400, "InvalidInput", "generateAlert must be true or false.")
    if action == "Audit" and not generate_alert:
        raise ItemError(400, "InvalidInput", "generateAlert must be set to true when the action is Audit.")
    severity = _enum(body["severity"], SEVERITIES, "severity") if body.get("severity") is not None else None
    for name in ("title", "description", "application", "recommendedActions", "externalID", "educateUrl"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ItemError(400, "InvalidInput", f"{name} must be a string.")
    educate = body.get("educateUrl") or None
    if educate is not None:
        if kind not in NETWORK_TYPES or action not in ("Block", "Warn"):
            raise ItemError(400, "InvalidInput", "educateUrl applies only to Block or Warn on URL, domain and IP "
                                                 "indicators.")
        if not _valid_url(educate):
            raise ItemError(400, "InvalidUrl", f"educateUrl '{educate}' is not a valid URL.")
    groups = _rbac_groups(body.get("rbacGroupNames"))
    return {
        "key": (kind, key), "indicatorValue": body["indicatorValue"], "indicatorType": kind, "action": action,
        "title": body["title"], "description": body["description"], "application": body.get("application"),
        "expirationTime": _expiration(body.get("expirationTime"), now), "severity": severity or "Informational",
        "recommendedActions": body.get("recommendedActions"), "rbacGroupNames": groups,
        "rbacGroupIds": [RBAC_GROUPS[n] for n in groups], "generateAlert": generate_alert,
        "educateUrl": educate, "externalID": body.get("externalID"),
    }


# -----------------------------------------------------------------------------------------------------------------
# The store
# -----------------------------------------------------------------------------------------------------------------
class Indicators:
    """The tenant's indicators, by id and by (type, normalized value), behind one lock."""

    def __init__(self, emu: Emulator):
        self.emu = emu
        self.lock = threading.Lock()
        self.by_id: dict[str, dict] = {}
        self.by_key: dict[tuple[str, str], dict] = {}
        self.next_id = 1000 + random.Random(emu.options.seed + 15).randrange(1000)
        self._seed()

    def _seed(self) -> None:
        """A few indicators other principals created, from the same files, IPs and domains the alerts show."""
        store = self.emu.store
        files = sorted(store.files.values(), key=lambda f: f["sha1"])[:6]
        network = sorted({(e["entityType"], e["ipAddress"] or e["url"]) for evs in list(store.evidence.values())
                          for e in evs if e["entityType"] in ("Ip", "Url")})[:6]
        now = _now(self.emu)
        rows = [(("FileSha1", "FileSha256", "FileMd5")[i % 3], f[("sha1", "sha256", "md5")[i % 3]],
                 ("Block", "BlockAndRemediate", "AlertAndBlock")[i % 3]) for i, f in enumerate(files)]
        rows += [("IpAddress" if kind == "Ip" else "DomainName", value, ("Block", "Audit", "Alert")[i % 3])
                 for i, (kind, value) in enumerate(network)]
        for i, (kind, value, action) in enumerate(rows):
            owner = (SEED_OWNER_APP, "Threat intel sync", "AadApp") if i % 2 == 0 else \
                (SEED_OWNER_USER, SEED_OWNER_USER, "User")
            created = now - dt.timedelta(days=20 - i)
            fields = {"key": (kind, normalized_value(kind, value)), "indicatorValue": value, "indicatorType": kind,
                      "action": action, "title": f"Seeded {kind} indicator {i + 1}",
                      "description": "Created by the emulator's seed data.", "application": None,
                      "expirationTime": format_datetime(now + dt.timedelta(days=30 + i)) if i % 4 else None,
                      "severity": SEVERITIES[i % 4], "recommendedActions": None, "rbacGroupNames": [],
                      "rbacGroupIds": [], "generateAlert": action in ("Audit", "Alert", "AlertAndBlock"),
                      "educateUrl": None, "externalID": None}
            self._create(fields, Caller(owner[0], owner[1], owner[2], True), created)

    def _create(self, fields: dict, caller: Caller, now: dt.datetime) -> dict:
        stamp = format_datetime(now)
        record = {
            "id": str(self.next_id), "indicatorValue": fields["indicatorValue"],
            "indicatorType": fields["indicatorType"], "action": fields["action"],
            "application": fields["application"], "source": caller.display_name, "sourceType": caller.source_type,
            "title": fields["title"], "creationTimeDateTimeUtc": stamp, "createdBy": caller.id,
            "expirationTime": fields["expirationTime"], "lastUpdateTime": stamp, "lastUpdatedBy": caller.id,
            "severity": fields["severity"], "description": fields["description"],
            "recommendedActions": fields["recommendedActions"], "rbacGroupNames": fields["rbacGroupNames"],
            "rbacGroupIds": fields["rbacGroupIds"], "generateAlert": fields["generateAlert"],
            "createdBySource": "PublicApi" if caller.source_type == "AadApp" else "Portal",
            "createdByDisplayName": caller.display_name, "externalID": fields["externalID"],
            "educateUrl": fields["educateUrl"], "mitreTechniques": [], "historicalDetection": False,
            "lookBackPeriod": None, "category": None,
        }
        self.next_id += 1
        self.by_id[record["id"]] = record
        self.by_key[fields["key"]] = record
        return record

    def active_count(self, now: dt.datetime) -> int:
        now_key = _datetime_key(format_datetime(now))
        return sum(1 for r in self.by_id.values() if _is_active(r, now_key))

    def upsert(self, fields: dict, caller: Caller, now: dt.datetime, active: list[int]) -> dict:
        """Create or update under the lock; `active` is the tenant's active count, kept current across a batch."""
        existing = self.by_key.get(fields["key"])
        if existing is not None:
            if not caller.may_see(existing):
                raise ItemError(403, "Forbidden", f"Indicator '{fields['indicatorValue']}' was created by another "
                                                  "principal; updating it requires Ti.ReadWrite.All.")
            was_active = _is_active(existing, _datetime_key(format_datetime(now)))
            if not was_active and active[0] >= MAX_ACTIVE:
                raise self._cap_error(active[0])
            for name in ("indicatorValue", "action", "title", "description", "expirationTime", "severity",
                         "recommendedActions", "rbacGroupNames", "rbacGroupIds", "generateAlert", "educateUrl",
                         "externalID"):
                existing[name] = fields[name]
            existing["lastUpdateTime"] = format_datetime(now)
            existing["lastUpdatedBy"] = caller.id
            active[0] += 0 if was_active else 1
            return existing
        if active[0] >= MAX_ACTIVE:
            raise self._cap_error(active[0])
        active[0] += 1
        return self._create(fields, caller, now)

    @staticmethod
    def _cap_error(count: int) -> ItemError:
        return ItemError(400, "InvalidInput", f"The maximum number of active indicators ({MAX_ACTIVE}) for the "
                                              f"tenant has been reached ({count} active). Delete or expire "
                                              "indicators before adding new ones.")

    def visible(self, caller: Caller) -> list[dict]:
        with self.lock:
            return [r for r in self.by_id.values() if caller.may_see(r)]

    def get(self, indicator_id: str, caller: Caller) -> dict:
        record = self.by_id.get(indicator_id)
        if record is None or not caller.may_see(record):
            raise not_found("Indicator", indicator_id)
        return record

    def delete(self, ids: list[str]) -> None:
        for indicator_id in ids:
            record = self.by_id.pop(indicator_id)
            del self.by_key[(record["indicatorType"], normalized_value(record["indicatorType"],
                                                                        record["indicatorValue"]))]


# -----------------------------------------------------------------------------------------------------------------
# Handlers
# -----------------------------------------------------------------------------------------------------------------
class IndicatorApi:
    def __init__(self, emu: Emulator):
        self.emu = emu
        self.indicators = Indicators(emu)

    def submit(self, request: Request) -> Response:
        body = require_body(request)
        now = _now(self.emu)
        caller = Caller.of(request)
        store = self.indicators
        try:
            fields = validated(body, now)
            with store.lock:
                record = store.upsert(fields, caller, now, [store.active_count(now)])
        except ItemError as exc:
            raise exc.api_error() from None
        return entity(request, "Indicators", record)

    def list(self, request: Request) -> Response:
        return serve_collection(request, self.indicators.visible(Caller.of(request)), INDICATORS)

    def get(self, request: Request) -> Response:
        with self.indicators.lock:
            record = dict(self.indicators.get(request.params["id"], Caller.of(request)))
        return entity(request, "Indicators", record)

    def delete(self, request: Request) -> Response:
        store = self.indicators
        with store.lock:
            store.get(request.params["id"], Caller.of(request))
            store.delete([request.params["id"]])
        return Response(204)

    def import_(self, request: Request) -> Response:
        items = _batch(require_body(request), "Indicators")
        now = _now(self.emu)
        caller = Caller.of(request)
        store = self.indicators
        results = []
        with store.lock:
            active = [store.active_count(now)]
            for item in items:
                value = item.get("indicatorValue") if isinstance(item, dict) else None
                try:
                    record = store.upsert(validated(item, now), caller, now, active)
                    results.append({"id": record["id"], "indicator": value, "isFailed": False,
                                    "failureReason": None})
                except ItemError as exc:
                    results.append({"id": None, "indicator": value, "isFailed": True,
                                    "failureReason": f"{exc.code}: {exc.message}"})
        return Response.json(200, {"@odata.context": f"{self.emu.base_url}/api/$metadata#Collection("
                                                     "microsoft.windowsDefenderATP.api.ImportIndicatorResult)",
                                   "value": results})

    def batch_delete(self, request: Request) -> Response:
        ids = _batch(require_body(request), "IndicatorIds")
        if not all(isinstance(i, (str, int)) and not isinstance(i, bool) and str(i).isdigit() for i in ids):
            raise ApiError(400, "InvalidInput", "IndicatorIds must be a list of indicator ids (numeric strings).")
        ids = list(dict.fromkeys(str(i) for i in ids))
        caller = Caller.of(request)
        store = self.indicators
        with store.lock:
            missing = [i for i in ids if i not in store.by_id or not caller.may_see(store.by_id[i])]
            if missing:
                raise ApiError(404, "ResourceNotFound", f"Indicators not found: {', '.join(missing)}. "
                                                        "No indicator was deleted.")
            store.delete(ids)
        return Response(204)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/indicators", self.list, "indicators", TI_ROLES),
            Route("POST", "/api/indicators", self.submit, "indicators", TI_ROLES),
            Route("POST", "/api/indicators/import", self.import_, "indicators_import", TI_ROLES),
            Route("POST", "/api/indicators/BatchDelete", self.batch_delete, "indicators_batchdelete", TI_ROLES),
            Route("GET", "/api/indicators/{id}", self.get, "indicators", TI_ROLES),
            Route("DELETE", "/api/indicators/{id}", self.delete, "indicators", TI_ROLES),
        ]


def _batch(body: dict, name: str) -> list:
    unknown = [k for k in body if k != name]
    if unknown:
        raise ApiError(400, "InvalidRequestBody", f"Request body contains an unknown parameter '{unknown[0]}'; "
                                                  f"expected only '{name}' (names are case-sensitive).")
    items = body.get(name)
    if not isinstance(items, list) or not items:
        raise ApiError(400, "InvalidInput", f"'{name}' must be a non-empty list.")
    if len(items) > MAX_BATCH:
        raise ApiError(400, "MaximumBatchSizeExceeded", f"The batch holds {len(items)} items; the maximum is "
                                                        f"{MAX_BATCH}.")
    return items


def routes(emu: Emulator) -> list[Route]:
    """The indicator routes bound to this emulator's indicator store."""
    return IndicatorApi(emu).routes()

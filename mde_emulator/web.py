"""Small HTTP vocabulary shared by the emulator's modules: requests, responses, routes and API errors."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import odata

if TYPE_CHECKING:
    from .server import Emulator

ODATA_JSON = "application/json; odata.metadata=minimal; odata.streaming=true"
PLAIN_JSON = "application/json; charset=utf-8"


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, /api/v1.0 folded into /api
    query: dict[str, str]  # first value of each parameter
    headers: dict[str, str]  # lower-case names
    body: bytes
    emu: Emulator
    client_ip: str = "127.0.0.1"
    params: dict[str, str] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    raw_path: str = ""

    def json(self) -> Any:
        """The JSON body; an unparsable body is the caller's error (400 InvalidRequestBody)."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise ApiError(400, "InvalidRequestBody", "Request body is not valid JSON.") from None

    @property
    def app_id(self) -> str:
        return self.claims.get("appid") or self.claims.get("azp") or ""

    @property
    def requestor(self) -> str:
        """Who the service records as requestor: the user for delegated tokens, else the application id."""
        return self.claims.get("upn") or self.app_id


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, content_type: str = ODATA_JSON, headers: dict | None = None) -> Response:
        hdrs = {"Content-Type": content_type}
        if content_type == ODATA_JSON:
            hdrs["OData-Version"] = "4.0"
        hdrs.update(headers or {})
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), hdrs)


class ApiError(Exception):
    """An error in the Defender API's shape: {"error": {"code", "message", "target"}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self, graph: bool = False) -> Response:
        """Defender's shape, or Microsoft Graph's (`innerError` with date and request ids) for Graph routes."""
        if graph:
            inner = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                     "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())}
            body = {"error": {"code": self.code, "message": self.message, "innerError": inner}}
            return Response.json(self.status, body, content_type=PLAIN_JSON, headers=self.headers)
        body = {"error": {"code": self.code, "message": self.message, "target": str(uuid.uuid4())}}
        return Response.json(self.status, body, headers=self.headers)


def not_found(entity: str, key: str) -> ApiError:
    return ApiError(404, "ResourceNotFound", f"{entity} {key} was not found")


def require_body(request: Request) -> dict:
    body = request.json()
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequestBody", "Request body is missing or is not a JSON object.")
    return body


Handler = Callable[[Request], Response]


@dataclass
class Route:
    """A route template such as /api/machines/{id}/isolate; matching is case-insensitive like ASP.NET's."""

    method: str
    template: str
    handler: Handler
    family: str = ""  # rate-limit family (machines, alerts, ...); empty for non-API routes
    roles: tuple[str, ...] = ()  # any-of; empty = no permission check
    pattern: re.Pattern = field(init=False)

    def __post_init__(self):
        regex = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        self.pattern = re.compile(f"^{regex}$", re.IGNORECASE)


def odata_context(request: Request, entity_set: str, entity: bool = False) -> str:
    return f"{request.emu.base_url}/api/$metadata#{entity_set}" + ("/$entity" if entity else "")


def collection(request: Request, entity_set: str, values: list) -> Response:
    return Response.json(200, {"@odata.context": odata_context(request, entity_set), "value": values})


def entity(request: Request, entity_set: str, record: dict, status: int = 200) -> Response:
    return Response.json(status, {"@odata.context": odata_context(request, entity_set, True), **record})


def serve_collection(request: Request, rows: list[dict], schema: odata.Schema,
                     render: Callable[[dict, odata.QueryOptions], dict] | None = None) -> Response:
    """Apply the request's OData options to `rows` and answer the page, with @odata.nextLink when paging."""
    try:
        opts = odata.parse_options(request.query, schema)
        page, total, more = odata.apply_options(rows, opts)
    except odata.ODataError as exc:
        raise ApiError(400, "ODataError", str(exc)) from None
    values = [odata.project(render(r, opts) if render else r, opts) for r in page]
    body: dict[str, Any] = {"@odata.context": odata_context(request, schema.entity_set)}
    if opts.count:
        body["@odata.count"] = total
    body["value"] = values
    if more:
        body["@odata.nextLink"] = odata.next_link(request.emu.base_url, request.raw_path, request.query,
                                                  opts.skip + opts.page_size)
    return Response.json(200, body)

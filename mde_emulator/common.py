"""Request-level helpers shared by the API modules (kept here so no api_* module imports another)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from urllib.parse import urlencode

from .web import ApiError, Request, Response, not_found

SHA1_RE = re.compile(r"^[0-9a-fA-F]{40}$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-zA-Z0-9-]{1,63}\.)+[a-zA-Z]{2,63}$")


def get_machine(request: Request, key: str | None = None) -> dict:
    """The machine named by `key` (id or computer name; default: the {id} path parameter), else 404."""
    key = key if key is not None else request.params["id"]
    machine = request.emu.store.find_machine(key)
    if machine is None:
        raise not_found("Machine", key)
    return machine


def get_action(request: Request) -> dict:
    """The machine action named by the {id} path parameter, else 404."""
    action = request.emu.store.actions_by_id.get(request.params["id"].lower())
    if action is None:
        raise not_found("Machine action", request.params["id"])
    return action


def check_body(body: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """The service's body rules: names are case-sensitive, unknown names and missing required ones are errors."""
    allowed = set(required) | set(optional)
    for name in body:
        if name not in allowed:
            hint = next((a for a in allowed if a.lower() == name.lower()), None)
            detail = f" Did you mean '{hint}'? Parameter names are case-sensitive." if hint else ""
            raise ApiError(400, "InvalidRequestBody", f"Request body contains an unknown parameter '{name}'.{detail}")
    for name in required:
        if body.get(name) in (None, ""):
            raise ApiError(400, "MissingRequiredParameter", f"Missing required parameter '{name}'.")


def check_ip(value: str) -> str:
    """The service answers 400 InvalidIpAddress for anything that is not an IP address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ApiError(400, "InvalidIpAddress", f"'{value}' is not a valid IP address.") from None
    return value


# Short-lived download links (investigation packages, live response results): like Azure SAS URLs, they carry an
# expiry (`se`) and a signature (`sig`) over the path, and need no bearer token.
def _link_signature(emu, path: str, expires: int) -> str:
    return hmac.new(emu.package_key, f"{path}:{expires}".encode(), hashlib.sha256).hexdigest()


def signed_link(emu, path: str, lifetime: int) -> Response:
    """The API's answer holding a link to `path` valid for `lifetime` seconds of the emulator's clock."""
    expires = int(emu.clock.now()) + lifetime
    query = urlencode({"se": expires, "sig": _link_signature(emu, path, expires)})
    return Response.json(200, {"@odata.context": f"{emu.base_url}/api/$metadata#Edm.String",
                               "value": f"{emu.base_url}{path}?{query}"})


def link_refused(request: Request) -> Response | None:
    """None when the request's link is genuine and unexpired, else the storage service's 403."""
    try:
        expires = int(request.query.get("se", ""))
    except ValueError:
        expires = 0
    expected = _link_signature(request.emu, request.path, expires)
    if hmac.compare_digest(expected, request.query.get("sig", "")) and expires >= request.emu.clock.now():
        return None
    return Response(403, b"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>"
                         b"<Message>Signature not valid or expired.</Message></Error>", {"Content-Type": "application/xml"})

"""Request-level helpers shared by the API modules (kept here so no api_* module imports another)."""

from __future__ import annotations

import re

from .web import ApiError, Request, not_found

SHA1_RE = re.compile(r"^[0-9a-fA-F]{40}$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-zA-Z0-9-]{1,63}\.)+[a-zA-Z]{2,63}$")


def get_machine(request: Request, key: str | None = None) -> dict:
    """The machine named by `key` (id or computer name; default: the {id} path parameter), else 404."""
    key = key if key is not None else request.params["id"]
    machine = request.emu.store.find_machine(key)
    if machine is None:
        raise not_found("Machine", key)
    return machine


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

"""HTTPS server, routing, fault injection (rate limits, error bursts, latency, dropped connections) and counters.

One `Emulator` holds the state (clock, identity, store, faults, counters) and turns a `Request` into a `Response`;
`EmulatorServer` serves it over TLS on 127.0.0.1 with the standard library's ThreadingHTTPServer.

Routes: every service area is one module listed in `ROUTE_MODULES`; `assemble_routes` builds the route table from
them in that order (first match wins). A module exposes `ROUTES: list[Route]`, or `routes(emu) -> list[Route]`
when its handlers need the `Emulator` instance (identity's are bound to `emu.identity`). Adding an area means
writing `api_<area>.py` with its `ROUTES` and adding the module to `ROUTE_MODULES`; nothing else here changes.
Routes under /api/ need a valid bearer token and count against rate limits by `Route.family`; others (token
endpoints, download links) do not. /admin/* routes come from `admin.ROUTES` and are loopback-only.

Time: `Emulator.clock` (see clock.py) is the only source of "now"; POST /admin/clock {"advance": s} moves it.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from . import (
    admin,
    api_actions,
    api_alerts,
    api_hunting,
    api_indicators,
    api_live_response,
    api_machines,
    api_reputation,
    api_tvm,
    identity,
)
from .clock import Clock
from .data import Store
from .identity import EntraError, Identity
from .web import PLAIN_JSON, ApiError, Request, Response, Route

log = logging.getLogger("mde_emulator")

ACTION_OUTCOMES = ("Succeeded", "Failed", "TimeOut")
TOKEN_KINDS = ("client_credentials", "authorization_code", "refresh_token", "oproxy", "managed_identity")
GARBLE_KINDS = ("html", "malformed", "empty")
GARBLED_BODIES = {"html": (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
                  "malformed": (b'{"id": "', "application/json"), "empty": (b"", "application/json")}
API_ERROR_CODES = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}
ROUTE_MODULES = (identity, api_machines, api_actions, api_alerts, api_hunting, api_indicators, api_live_response,
                 api_reputation, api_tvm)


def assemble_routes(emu: Emulator, modules=ROUTE_MODULES) -> list[Route]:
    """The route table from each module's `routes(emu)` or `ROUTES`; a route declared twice is a bug."""
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for module in modules:
        for route in module.routes(emu) if hasattr(module, "routes") else module.ROUTES:
            key = (route.method, route.template.lower())
            if key in seen:
                raise ValueError(f"{route.method} {route.template} is declared by both {seen[key]} and "
                                 f"{module.__name__}")
            seen[key] = module.__name__
            routes.append(route)
    return routes


@dataclass
class Options:
    """Start-up switches (the CLI flags)."""

    port: int = 0
    seed: int = 1
    machines: int = 2000
    alerts: int = 500
    state_dir: str | None = None
    token_lifetime: int = 3600
    rate_limit_per_minute: int | None = None
    rate_limit_window_seconds: float = 60.0
    action_delay: float = 2.0
    action_outcome: str = "Succeeded"
    latency_ms: int = 0
    alert_stream: float = 0.0


@dataclass
class Faults:
    """Switches that can change at run time through POST /admin/faults."""

    rate_limit_per_minute: int | None = None
    rate_limit_families: list[str] | None = None
    rate_limit_window_seconds: float = 60.0  # the quota window; shorter windows keep tests fast
    error_burst: dict | None = None  # {"status": 503, "count": 3, "families": [...] or None}
    latency_ms: int = 0
    token_lifetime: int = 3600
    drop_connections: int = 0
    drop_after_write: int = 0  # process the next N API writes, then drop the connection without an answer
    garbled_success: dict | None = None  # {"count": N, "kind": "html" | "malformed" | "empty"}: N successes garbled
    action_outcome: str = "Succeeded"
    action_delay: float = 2.0
    hunting_quota: dict | None = None  # {"kind": "calls" | "cpu", "count": N, "retry_after": seconds}
    hunting_slow_queries: int = 0  # the next N hunting queries answer "Query exceeded the timeout period."
    hunting_max_rows: int = 100_000  # more rows than this: the result-size error

    def update(self, changes: dict) -> None:
        """Validate and apply a partial update; raises ValueError with a readable message."""
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        checked = {}
        for name, value in changes.items():
            if name == "rate_limit_per_minute" and value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError("rate_limit_per_minute must be a positive integer or null")
            if name in ("rate_limit_families",) and value is not None and (
                    not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name} must be a list of family names or null")
            if name == "error_burst" and value is not None:
                if not isinstance(value, dict) or not isinstance(value.get("status"), int) or not (
                        400 <= value["status"] <= 599):
                    raise ValueError("error_burst must be {\"status\": 4xx/5xx, \"count\": N, \"families\": [...]}")
                value = {"status": value["status"], "count": int(value.get("count", 1)),
                         "families": value.get("families")}
            if name == "garbled_success" and value is not None and (
                    not isinstance(value, dict) or value.get("kind") not in GARBLE_KINDS
                    or not isinstance(value.get("count", 1), int)):
                raise ValueError(f"garbled_success must be {{\"count\": N, \"kind\": one of {', '.join(GARBLE_KINDS)}}}")
            if name in ("latency_ms", "drop_connections", "drop_after_write") and (
                    not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer")
            if name == "rate_limit_window_seconds" and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError("rate_limit_window_seconds must be a positive number")
            if name == "token_lifetime" and (not isinstance(value, int) or value < 1):
                raise ValueError("token_lifetime must be a positive integer (seconds)")
            if name == "action_outcome" and value not in ACTION_OUTCOMES:
                raise ValueError(f"action_outcome must be one of {', '.join(ACTION_OUTCOMES)}")
            if name == "action_delay" and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError("action_delay must be a non-negative number of seconds")
            if name == "hunting_quota" and value is not None:
                if not isinstance(value, dict) or value.get("kind") not in ("calls", "cpu"):
                    raise ValueError('hunting_quota must be {"kind": "calls" or "cpu", "count": N, '
                                     '"retry_after": seconds} or null')
                value = {"kind": value["kind"], "count": int(value.get("count", 1)),
                         "retry_after": int(value.get("retry_after", 60 if value["kind"] == "calls" else 852))}
            if name in ("hunting_slow_queries",) and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer")
            if name == "hunting_max_rows" and (not isinstance(value, int) or value < 1):
                raise ValueError("hunting_max_rows must be a positive integer")
            checked[name] = value
        for name, value in checked.items():
            setattr(self, name, value)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests: collections.Counter = collections.Counter()
            self.tokens = dict.fromkeys(TOKEN_KINDS, 0)
            self.responses: collections.Counter = collections.Counter()

    def add(self, counter: str, key: str) -> None:
        with self.lock:
            target = self.tokens if counter == "tokens" else getattr(self, counter)
            target[key] = target.get(key, 0) + 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": dict(self.requests), "token_requests": dict(self.tokens),
                    "responses": dict(self.responses)}


class RateLimiter:
    """Sliding window (60 s unless changed) per (application, endpoint family), on the emulator's clock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], collections.deque] = collections.defaultdict(collections.deque)

    def check(self, key: tuple[str, str], limit: int, now: float, window: float = 60.0) -> int:
        """0 when the call is admitted (and recorded), else the seconds until a slot frees (at least 1)."""
        with self.lock:
            calls = self.calls[key]
            while calls and calls[0] <= now - window:
                calls.popleft()
            if len(calls) >= limit:
                return max(1, math.ceil(calls[len(calls) - limit] + window - now))
            calls.append(now)
            return 0

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()


class Emulator:
    """The whole service: routes a request through auth, faults and the endpoint handlers."""

    def __init__(self, options: Options, base_url: str, state_dir: Path):
        self.options = options
        self.base_url = base_url
        self.state_dir = state_dir
        self.faults = Faults(rate_limit_per_minute=options.rate_limit_per_minute,
                             rate_limit_window_seconds=options.rate_limit_window_seconds, latency_ms=options.latency_ms,
                             token_lifetime=options.token_lifetime, action_outcome=options.action_outcome,
                             action_delay=options.action_delay)
        self.faults_lock = threading.Lock()
        self.clock = Clock()
        self.counters = Counters()
        self.rate_limiter = RateLimiter()
        self.identity = Identity(base_url=base_url, state_dir=state_dir, lifetime=lambda: self.faults.token_lifetime,
                                 on_token=lambda kind: self.counters.add("tokens", kind), clock=self.clock)
        self.store = Store(seed=options.seed, machines=options.machines, alerts=options.alerts,
                           tenant_id=self.identity.tenant_id, clock=self.clock)
        self.package_key = uuid.uuid4().bytes
        self.routes: list[Route] = assemble_routes(self)
        self.admin_routes = admin.ROUTES

    # -- dispatch ----------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response | None:
        """The response to send, or None to drop the connection without one."""
        if request.path.lower().startswith("/admin/") or request.path.lower() == "/admin":
            return self._dispatch_admin(request)
        route, allowed = self._match(self.routes, request)
        if route is None:
            self.counters.add("requests", f"{request.method} (unmatched)")
            response = self._not_found(request, allowed)
            self.counters.add("responses", str(response.status))
            return response
        self.counters.add("requests", f"{request.method} {route.template}")
        faults = self.faults
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        is_api = route.template.startswith(("/api/", "/v1.0/"))
        if is_api and self._take_drop():
            self.counters.add("responses", "dropped")
            return None
        try:
            response = self._handle(route, request, is_api)
        except ApiError as exc:
            response = exc.response(graph=route.family == "graph")
        except EntraError as exc:
            response = exc.response(self.base_url, self.clock.utcnow())
        except Exception:  # a bug in the emulator: answer like the service would, and log it
            log.exception("internal error on %s %s", request.method, request.path)
            response = ApiError(500, "InternalServerError", "An unexpected error occurred.").response()
        if is_api and request.method != "GET" and response.status < 300 and self._take_count("drop_after_write"):
            self.counters.add("responses", "dropped after processing")
            return None
        garble = self._take_garble() if is_api and response.status < 300 else None
        if garble:
            body, content_type = GARBLED_BODIES[garble]
            response = Response(response.status, body, {**response.headers, "Content-Type": content_type})
        self.counters.add("responses", str(response.status))
        return response

    def _take_count(self, name: str) -> bool:
        with self.faults_lock:
            if getattr(self.faults, name) > 0:
                setattr(self.faults, name, getattr(self.faults, name) - 1)
                return True
            return False

    def _take_garble(self) -> str | None:
        with self.faults_lock:
            garble = self.faults.garbled_success
            if not garble or garble.get("count", 1) <= 0:
                return None
            garble["count"] = garble.get("count", 1) - 1
            if garble["count"] <= 0:
                self.faults.garbled_success = None
            return garble["kind"]

    def _handle(self, route: Route, request: Request, is_api: bool) -> Response:
        if not is_api:
            burst = self._take_burst(route.family)
            if burst:
                return self._burst_response(route.family, burst)
            return route.handler(request)
        api_actions.advance_actions(self)
        request.claims = self.identity.validate_api_token(request.headers.get("authorization"),
                                                          graph=route.family == "graph")
        limit = self.faults.rate_limit_per_minute
        families = self.faults.rate_limit_families
        if limit and (families is None or route.family in families):
            window = self.faults.rate_limit_window_seconds
            wait = self.rate_limiter.check((request.app_id, route.family), limit, self.clock.now(), window)
            if wait:
                period = time.strftime("%H:%M:%S", time.gmtime(round(window)))
                raise ApiError(429, "TooManyRequests",
                               f"API calls quota exceeded! Maximum allowed {limit} per {period} for the key "
                               f"Destination+TenantID+AppID. You can send requests again in {wait} seconds.",
                               headers={"Retry-After": str(wait)})
        burst = self._take_burst(route.family)
        if burst:
            return self._burst_response(route.family, burst)
        if route.roles:
            granted = set(request.claims.get("roles") or []) | set((request.claims.get("scp") or "").split())
            if not granted.intersection(route.roles):
                raise ApiError(403, "Forbidden", "The application does not have any of the required application "
                                                 f"permissions ({', '.join(route.roles)}) to access the resource.")
        return route.handler(request)

    def _dispatch_admin(self, request: Request) -> Response:
        if not (request.client_ip.startswith("127.") or request.client_ip in ("::1", "localhost")):
            return Response.json(403, {"error": "admin endpoints are loopback only"}, content_type=PLAIN_JSON)
        route, allowed = self._match(self.admin_routes, request)
        if route is None:
            return self._not_found(request, allowed)
        try:
            return route.handler(request)
        except ApiError as exc:
            return Response.json(exc.status, {"error": exc.message}, content_type=PLAIN_JSON)
        except Exception as exc:
            log.exception("admin request failed: %s %s", request.method, request.path)
            return Response.json(500, {"error": f"{type(exc).__name__}: {exc}"}, content_type=PLAIN_JSON)

    @staticmethod
    def _match(routes: list[Route], request: Request) -> tuple[Route | None, list[str]]:
        allowed = []
        for route in routes:
            m = route.pattern.match(request.path)
            if m:
                if route.method == request.method:
                    request.params = m.groupdict()
                    return route, []
                allowed.append(route.method)
        return None, allowed

    @staticmethod
    def _not_found(request: Request, allowed: list[str]) -> Response:
        if allowed:
            return ApiError(405, "MethodNotAllowed", f"The requested resource does not support http method "
                                                     f"'{request.method}'.", headers={"Allow": ", ".join(allowed)}
                            ).response()
        return ApiError(404, "ResourceNotFound", f"No HTTP resource was found that matches the request URI "
                                                 f"'{request.path}'.").response()

    def _take_drop(self) -> bool:
        return self._take_count("drop_connections")

    def _take_burst(self, family: str) -> dict | None:
        with self.faults_lock:
            burst = self.faults.error_burst
            if not burst or burst["count"] <= 0:
                return None
            families = burst.get("families")
            if families is None and family in ("token", "oproxy", "imds", "download"):
                return None  # without a list, bursts hit the Defender API only
            if families is not None and family not in families:
                return None
            burst["count"] -= 1
            if burst["count"] <= 0:
                self.faults.error_burst = None
            return dict(burst)

    def _burst_response(self, family: str, burst: dict) -> Response:
        status = burst["status"]
        if family == "token":
            return EntraError(status, "temporarily_unavailable", 90033,
                              "A transient error has occurred. Please try again.").response(self.base_url,
                                                                                          self.clock.utcnow())
        if family == "oproxy":
            return Response.json(status, {"title": "Service Unavailable", "detail": "Please try again later."},
                                 content_type=PLAIN_JSON)
        if family == "imds":
            return Response.json(status, {"error": "temporarily_unavailable",
                                          "error_description": "The service is temporarily unavailable."},
                                 content_type=PLAIN_JSON)
        code = API_ERROR_CODES.get(status, "TooManyRequests" if status == 429 else "BadRequest")
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return ApiError(status, code, "The service is temporarily unavailable. Please try again later.",
                        headers=headers).response()


# -----------------------------------------------------------------------------------------------------------------
# HTTP over TLS
# -----------------------------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    timeout = 120  # idle keep-alive connections are closed after this

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._serve()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET  # noqa: N815

    def _serve(self) -> None:
        emu: Emulator = self.server.emulator  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        path = unquote(split.path)
        if path.lower().startswith("/api/v1.0/") or path.lower() == "/api/v1.0":
            path = "/api" + path[len("/api/v1.0"):]
        request = Request(method=self.command, path=path, query=query, body=body, emu=emu,
                          headers={k.lower(): v for k, v in self.headers.items()},
                          client_ip=self.client_address[0], raw_path=split.path)
        response = emu.dispatch(request)
        if response is None:
            self.close_connection = True
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("request-id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, ssl_context: ssl.SSLContext):
        self.ssl_context = ssl_context
        self.emulator: Emulator | None = None
        super().__init__(address, _Handler)

    def finish_request(self, request, client_address):
        """Runs in the connection's thread: the TLS handshake happens here, not in the accept loop."""
        request.settimeout(30)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body go out at once
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class EmulatorServer:
    """Start the emulator on 127.0.0.1 in background threads; `info` is the ready-file content."""

    def __init__(self, options: Options):
        self.options = options
        self._own_state_dir = options.state_dir is None
        self.state_dir = Path(options.state_dir or tempfile.mkdtemp(prefix="mde-emulator-")).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = self.state_dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(context)
        self.httpd = _TLSServer(("127.0.0.1", options.port), context)
        self.port = self.httpd.server_address[1]
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.emulator = Emulator(options, self.base_url, self.state_dir)
        self.httpd.emulator = self.emulator
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mde-emulator", daemon=True)
        self._stream: admin.AlertStream | None = None

    def start(self) -> EmulatorServer:
        self._thread.start()
        if self.options.alert_stream > 0:
            self._stream = admin.AlertStream(self.emulator, self.options.alert_stream)
            self._stream.start()
        return self

    @property
    def info(self) -> dict:
        base = self.base_url
        return {"base_url": base, "api_url": base, "graph_url": base, "login_url": base, "oproxy_url": f"{base}/oproxy/obtain-token",
                "imds_url": base, "admin_url": f"{base}/admin", "ca_bundle": str(self.ca_path), "pid": os.getpid(),
                **self.emulator.identity.ready_info()}

    def stop(self) -> None:
        if self._stream:
            self._stream.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Microsoft Defender for Endpoint integration for Cortex XSOAR.

Runs unchanged inside XSOAR and from the local `mde` CLI: it imports `demistomock as demisto`,
the standard library, requests, msal and cryptography, nothing else.

Contents, in file order. Shared infrastructure first:
 1. Constants, Clock, cloud table     one table drives every Microsoft URL
 2. Errors and secret redaction
 3. Auth                              one provider per authentication flow behind `get_token()`
 4. Transport                         the one HTTP core: retries, 429, 401 refresh, paging, download
 5. Shared helpers                    arguments and validators, the OData builder, entity specs and the one
                                      result builder (`entity_result`), the command registry (`@command`)
Then one region per area, each holding its constants, entity specs, `<Area>Api` calls, commands and
(through `@command`) its registry rows:
 6.1 Auth and connection     6.2 Machines             6.3 Machine actions     6.4 Alerts
 6.5 Investigations          6.6 Fetch incidents      6.7 Advanced hunting    6.8 Indicators
 6.9 Live response           6.10 Reputation          6.11 Vulnerability management
And last:
 7. Client                            Transport plus every area's API mixin
 8. main()
"""


import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urljoin, urlparse

import requests

import demistomock as demisto

# ============================================================================================
# 1. Cloud table and constants
# ============================================================================================

INTEGRATION_NAME = "Microsoft Defender for Endpoint"
VENDOR = "Microsoft Defender ATP"
CONTEXT_PREFIX = "MicrosoftATP"

FLOW_XSOAR_APP = "Cortex XSOAR app"
FLOW_CLIENT_CREDENTIALS = "Client Credentials"
FLOW_AUTH_CODE = "Authorization Code"
FLOW_MANAGED_IDENTITY = "Azure Managed Identities"
AUTH_FLOWS = (FLOW_XSOAR_APP, FLOW_CLIENT_CREDENTIALS, FLOW_AUTH_CODE, FLOW_MANAGED_IDENTITY)


_COMMERCIAL_GRAPH = "https://graph.microsoft.com"


class Cloud(NamedTuple):
    """Where one Microsoft cloud keeps its login service and the Defender API."""

    login_host: str  # Entra ID authority host
    api_base: str  # Defender API host; the client appends /api
    scope: str  # OAuth2 scope of the Defender API application (WindowsDefenderATP)
    mi_resource: str  # resource asked of the managed-identity endpoint
    graph_base: str = _COMMERCIAL_GRAPH  # Microsoft Graph host (advanced hunting)
    graph_resource: str = ""  # the Graph token's audience and managed-identity resource; graph_base when empty

    @property
    def graph_audience(self) -> str:
        return self.graph_resource or self.graph_base

    @property
    def graph_scope(self) -> str:
        return f"{self.graph_audience}/.default"


_COMMERCIAL_LOGIN = "https://login.microsoftonline.com"
_US_GOV_LOGIN = "https://login.microsoftonline.us"
_COMMERCIAL_SCOPE = "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"
_US_GOV_SCOPE = "https://securitycenter.onmicrosoft.us/windowsatpservice/.default"

CLOUDS: dict[str, Cloud] = {
    "Worldwide": Cloud(_COMMERCIAL_LOGIN, "https://api.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                       "https://api.securitycenter.microsoft.com"),
    "EU Geo Proximity": Cloud(_COMMERCIAL_LOGIN, "https://api-eu.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                              "https://api.securitycenter.microsoft.com"),
    "UK Geo Proximity": Cloud(_COMMERCIAL_LOGIN, "https://api-uk.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                              "https://api.securitycenter.microsoft.com"),
    "US Geo Proximity": Cloud(_COMMERCIAL_LOGIN, "https://api-us.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                              "https://api.securitycenter.microsoft.com"),
    "US GCC": Cloud(_COMMERCIAL_LOGIN, "https://api-gcc.securitycenter.microsoft.us", _COMMERCIAL_SCOPE,
                    "https://api-gcc.securitycenter.microsoft.us"),
    "US GCC-High": Cloud(_US_GOV_LOGIN, "https://api-gov.securitycenter.microsoft.us", _US_GOV_SCOPE,
                         "https://api-gov.securitycenter.microsoft.us", "https://graph.microsoft.us"),
    "DoD": Cloud(_US_GOV_LOGIN, "https://api-gov.securitycenter.microsoft.us", _US_GOV_SCOPE,
                 "https://api-gov.securitycenter.microsoft.us", "https://dod-graph.microsoft.us"),
}
CUSTOM_CLOUD = "Custom"
ENDPOINT_TYPES = (*CLOUDS, CUSTOM_CLOUD)

OPROXY_URL = "https://oproxy.demisto.ninja/obtain-token"
OPROXY_APP_NAME = "ms-defender-atp"
CONSENT_URL = "https://oproxy.demisto.ninja/ms-defender-atp"

CONNECT_TIMEOUT = 10  # seconds
READ_TIMEOUT = 60
MANAGED_IDENTITY_TIMEOUT = (3, 10)  # off Azure the IMDS address does not answer: fail fast
TOKEN_EXPIRY_MARGIN = 300  # renew an access token this many seconds before it expires
MAX_PAGE_SIZE = 10_000  # Microsoft's $top limit for OData collections
MAX_PAGES = 1_000  # loop guard for the paging helper
MAX_RETRIES = 3  # for reads on 5xx and connection errors
MAX_RATE_LIMIT_WAIT = 120  # total seconds one request may spend waiting on 429s
DEFAULT_RETRY_AFTER = 10


class Clock:
    """Time as the integration sees it. Passed in through build_client (and from there to auth, transport,
    fetch and polling) so tests drive time instead of sleeping or patching the time module."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), timezone.utc)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = Clock()



# ============================================================================================
# 2. Errors and secret redaction
# ============================================================================================


class IntegrationError(Exception):
    """An error whose message is written for the user: it says what failed and what to do."""


class ArgumentError(IntegrationError):
    """A command argument is missing or invalid; raised before any API call."""


class ConfigurationError(IntegrationError):
    """An instance parameter is missing or inconsistent ("not configured")."""


class AuthError(IntegrationError):
    """Microsoft refused to issue a token ("refused")."""


class ApiError(IntegrationError):
    """The Defender API answered with an error."""

    def __init__(self, message: str, status: int | None = None, code: str = "", target: str = "",
                 ambiguous: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.target = target
        self.ambiguous = ambiguous  # a write that Microsoft may have carried out although no success came back


class Redactor:
    """Removes every secret the integration knows of from text meant for output or logs."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= 6:
                self._secrets.add(value)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        # bearer tokens and JWTs we never registered (e.g. echoed by a proxy)
        text = re.sub(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", "<redacted-jwt>", text)
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1<redacted>", text)


REDACT = Redactor()


def log_debug(message: str) -> None:
    demisto.debug(REDACT(message))


# ============================================================================================
# 3. Auth providers
# ============================================================================================

# ---- settings: one small class per flow --------------------------------------------------------


def _credential(params: dict, name: str, part: str = "password") -> str:
    value = params.get(name)
    if isinstance(value, dict):
        return str(value.get(part) or "").strip()
    return str(value or "").strip() if part == "password" else ""


def _first(*values: str) -> str:
    return next((value for value in values if value), "")


def _text(params: dict, name: str) -> str:
    return str(params.get(name) or "").strip()


def _param_bool(params: dict, name: str, label: str) -> bool:
    try:
        return arg_to_bool(params.get(name), f"{label} ({name})")
    except ArgumentError as exc:
        raise ConfigurationError(f"Instance parameter {exc}") from None


def resolve_flow(params: dict) -> str:
    """The "Authentication Flow" parameter, or the flow older instances imply."""
    flow = _text(params, "auth_flow")
    if flow:
        if flow not in AUTH_FLOWS:
            raise ConfigurationError(f"Authentication Flow '{flow}' is not supported. Choose one of: "
                                     f"{', '.join(AUTH_FLOWS)}.")
        return flow
    legacy_type = _text(params, "auth_type")
    if legacy_type in (FLOW_MANAGED_IDENTITY, FLOW_AUTH_CODE):
        return legacy_type
    if _param_bool(params, "self_deployed", "Use a self-deployed Azure Application"):
        return FLOW_CLIENT_CREDENTIALS
    return FLOW_XSOAR_APP


def _https_url(value: str, label: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ConfigurationError(f"{label} '{value}' is not a URL. Enter it as https://host[:port][/path].")
    return value


def resolve_cloud(params: dict) -> Cloud:
    endpoint_type = _text(params, "endpoint_type") or "Worldwide"
    if _param_bool(params, "is_gcc", "Using Microsoft GCC"):
        endpoint_type = "US GCC"
    url = _text(params, "url").rstrip("/")
    if endpoint_type == CUSTOM_CLOUD:
        if not url:
            raise ConfigurationError("Endpoint Type is 'Custom' but no Server URL is set. Enter the Defender API URL "
                                     f"in Server URL (e.g. {CLOUDS['Worldwide'].api_base}).")
        login = _text(params, "login_url").rstrip("/") or _COMMERCIAL_LOGIN
        graph = _text(params, "graph_url").rstrip("/") or _COMMERCIAL_GRAPH
        return Cloud(_https_url(login, "Login URL (login_url)"), _https_url(url, "Server URL (url)"),
                     _COMMERCIAL_SCOPE, CLOUDS["Worldwide"].mi_resource,
                     _https_url(graph, "Microsoft Graph URL (graph_url)"), _COMMERCIAL_GRAPH)
    if endpoint_type not in CLOUDS:
        raise ConfigurationError(f"Endpoint Type '{endpoint_type}' is unknown. Choose one of: "
                                 f"{', '.join(ENDPOINT_TYPES)}.")
    return CLOUDS[endpoint_type]


def auth_values(params: dict) -> dict[str, Any]:
    """The one place where current and legacy instance parameters become the values the flows read.

    Legacy names, newest first: ID = _auth_id_encrypted, _auth_id, auth_id; Token = _tenant_id_encrypted,
    _tenant_id, tenant_id; Key = credentials, enc_key; certificate = creds_certificate, then
    certificate_thumbprint + private_key; the flow from self_deployed/auth_type; the cloud from is_gcc."""
    return {
        "flow": resolve_flow(params),
        "cloud": resolve_cloud(params),
        "id": _first(_credential(params, "_auth_id_encrypted"), _text(params, "_auth_id"), _text(params, "auth_id")),
        "token": _first(_credential(params, "_tenant_id_encrypted"), _text(params, "_tenant_id"),
                        _text(params, "tenant_id")),
        "key": _first(_credential(params, "credentials"), _text(params, "enc_key")),
        "thumbprint": normalize_thumbprint(_first(_credential(params, "creds_certificate", "identifier"),
                                                  _text(params, "certificate_thumbprint"))),
        "private_key": normalize_private_key(_first(_credential(params, "creds_certificate"),
                                                    _text(params, "private_key"))),
        "redirect_uri": _text(params, "redirect_uri"),
        "auth_code": _credential(params, "auth_code"),
        "managed_identity_client_id": _credential(params, "managed_identities_client_id"),
    }


def normalize_thumbprint(value: str) -> str:
    thumbprint = re.sub(r"[\s:]", "", value).upper()
    if thumbprint and not re.fullmatch(r"[0-9A-F]{40}", thumbprint):
        raise ConfigurationError("Certificate Thumbprint must be the 40 hexadecimal characters of the certificate's "
                                 "SHA-1 thumbprint (colons and spaces are allowed).")
    return thumbprint


def normalize_private_key(value: str) -> str:
    """Restores a PEM key whose line breaks became spaces when pasted into a one-line field."""
    value = value.strip()
    match = re.fullmatch(r"(-----BEGIN [A-Z ]+-----)(.*?)(-----END [A-Z ]+-----)", value, re.DOTALL)
    if not match:
        return value
    header, body, footer = match.groups()
    body = re.sub(r"\s+", "", body)
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join([header, *lines, footer]) + "\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def repr_without_secrets(settings: Any) -> str:
    """A settings record as repr shows it, with each secret field only said to be set: a record that ends up in
    a log line or a traceback must not carry its credential along."""
    shown = (f"{name}=<set>" if name in settings.SECRET_FIELDS and value else f"{name}={value!r}"
             for name, value in settings._asdict().items())
    return f"{type(settings).__name__}({', '.join(shown)})"


class XsoarAppSettings(NamedTuple):
    """The Cortex XSOAR app: ID, Token and Key come from the consent page, not from Entra."""

    flow = FLOW_XSOAR_APP
    SECRET_FIELDS = ("consent_token", "encryption_key")
    __repr__ = repr_without_secrets
    cloud: Cloud
    registration_id: str
    consent_token: str
    encryption_key: str
    token_url: str = OPROXY_URL

    @classmethod
    def from_params(cls, params: dict) -> "XsoarAppSettings":
        values = auth_values(params)
        registration_id, _, url = values["id"].partition("@")  # "<id>@<url>" overrides the token service
        REDACT.add(values["token"], values["key"])
        return cls(values["cloud"], registration_id, values["token"], values["key"], url or OPROXY_URL)

    def identity(self) -> tuple[str, ...]:
        return self.registration_id, self.token_url, _digest(self.consent_token), _digest(self.encryption_key)


class ClientCredentialsSettings(NamedTuple):
    """A self-deployed Entra app proving itself with a client secret or a certificate. The authorization code
    flow's two fields are here too (empty in this flow) because a NamedTuple's subclass cannot add fields."""

    flow = FLOW_CLIENT_CREDENTIALS
    SECRET_FIELDS = ("client_secret", "private_key", "auth_code")
    __repr__ = repr_without_secrets
    cloud: Cloud
    client_id: str
    tenant_id: str
    client_secret: str = ""
    thumbprint: str = ""
    private_key: str = ""
    redirect_uri: str = ""
    auth_code: str = ""

    @classmethod
    def from_params(cls, params: dict) -> "ClientCredentialsSettings":
        values = auth_values(params)
        REDACT.add(values["key"], values["private_key"], values["auth_code"])
        return cls(values["cloud"], client_id=values["id"], tenant_id=values["token"], client_secret=values["key"],
                   thumbprint=values["thumbprint"], private_key=values["private_key"])

    @property
    def uses_certificate(self) -> bool:
        return bool(self.thumbprint and self.private_key)

    def identity(self) -> tuple[str, ...]:
        return (self.client_id, self.tenant_id, _digest(self.client_secret), self.thumbprint,
                _digest(self.private_key))


class AuthorizationCodeSettings(ClientCredentialsSettings):
    """A self-deployed Entra app acting for the user who signed in once (then refresh tokens)."""

    __slots__ = ()
    flow = FLOW_AUTH_CODE

    @classmethod
    def from_params(cls, params: dict) -> "AuthorizationCodeSettings":
        values = auth_values(params)
        return super().from_params(params)._replace(redirect_uri=values["redirect_uri"], auth_code=values["auth_code"])


class ManagedIdentitySettings(NamedTuple):
    """The Azure resource's own identity: system-assigned, or user-assigned when a client ID is set."""

    flow = FLOW_MANAGED_IDENTITY
    cloud: Cloud
    client_id: str = ""

    @classmethod
    def from_params(cls, params: dict) -> "ManagedIdentitySettings":
        values = auth_values(params)
        return cls(values["cloud"], values["managed_identity_client_id"])

    def identity(self) -> tuple[str, ...]:
        return (self.client_id,)


AuthSettings = XsoarAppSettings | ClientCredentialsSettings | AuthorizationCodeSettings | ManagedIdentitySettings
SETTINGS_BY_FLOW: dict[str, type] = {settings.flow: settings for settings in (
    XsoarAppSettings, ClientCredentialsSettings, AuthorizationCodeSettings, ManagedIdentitySettings)}


def auth_settings_from_params(params: dict) -> AuthSettings:
    return SETTINGS_BY_FLOW[resolve_flow(params)].from_params(params)


def credential_fingerprint(settings: AuthSettings) -> str:
    """Changes whenever anything that identifies the credential changes; secrets enter only hashed."""
    cloud = settings.cloud
    parts = (settings.flow, cloud.login_host, cloud.api_base, cloud.scope, cloud.mi_resource, *settings.identity())
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class Network(NamedTuple):
    """How requests leave the integration: certificate checking and proxy."""

    verify: bool = True
    proxies: dict | None = None  # None: the system's proxy settings

    @classmethod
    def from_params(cls, params: dict) -> "Network":
        insecure = _param_bool(params, "insecure", "Trust any certificate")
        use_proxy = _param_bool(params, "proxy", "Use system proxy settings")
        return cls(verify=not insecure, proxies={} if use_proxy else {"http": "", "https": ""})


DEFAULT_NETWORK = Network()  # certificates checked, the system's proxy settings


# ---- token state in the integration context --------------------------------------------------

TOKEN_LEASE_SECONDS = 120  # a run requesting a token holds the lease at most this long (then others take over)
TOKEN_LEASE_POLL = 0.25  # how often a run waiting for another run's token looks again
CONTEXT_WRITE_ATTEMPTS = 10


class TokenStore:
    """Token state in the integration context, shared by every run of the instance.

    Keys mirror the older integration's (`access_token`, `valid_until`, `current_refresh_token`) so an
    upgraded instance keeps its state. `auth_fingerprint` ties the state to the credential: after any
    credential change the old state is ignored and replaced. Writes use the versioned pair where the
    platform has it, so a run that lost a race re-reads instead of overwriting the winner.
    """

    KEYS = ("access_token", "valid_until", "current_refresh_token", "auth_fingerprint", "next_request_time",
            "delay_request_counter", "login_state", "used_auth_code", "token_lease", "graph_access_token",
            "graph_valid_until", "graph_token_lease")

    def __init__(self, fingerprint: str, clock: Clock = SYSTEM_CLOCK, resource_prefix: str = ""):
        self.fingerprint = fingerprint
        self.clock = clock
        # "graph_" keeps the Microsoft Graph token beside the Defender one; the refresh token is shared
        self.prefix = resource_prefix
        self.lease_key = f"{resource_prefix}token_lease"

    @staticmethod
    def _versioned() -> bool:
        return hasattr(demisto, "getIntegrationContextVersioned") and hasattr(demisto, "setIntegrationContextVersioned")

    def read(self) -> tuple[dict, int | None]:
        """The whole integration context and its version (None where the platform has no versions)."""
        if self._versioned():
            data = demisto.getIntegrationContextVersioned() or {}
            return dict(data.get("context") or {}), data.get("version")
        return dict(demisto.getIntegrationContext() or {}), None

    def write(self, context: dict, version: int | None) -> bool:
        """False when another run wrote since `version` was read."""
        if version is None:
            demisto.setIntegrationContext(context)
            return True
        try:
            demisto.setIntegrationContextVersioned(context, version)
        except Exception as exc:  # the platform's and the CLI's version conflicts have different types
            log_debug(f"Integration context changed by another run ({type(exc).__name__}); reading it again.")
            return False
        return True

    def ours(self, context: dict) -> dict:
        """The token state of this credential; empty when the stored state belongs to another one."""
        auth = {key: context[key] for key in self.KEYS if key in context}
        if auth.get("auth_fingerprint") not in (None, self.fingerprint):  # None: the older integration's state
            log_debug("The credentials changed since the stored token was issued; it will not be used.")
            return {}
        return auth

    def with_state(self, context: dict, **values: Any) -> dict:
        """`context` with our token state updated by `values` (None removes a key)."""
        state = {**self.ours(context), **values, "auth_fingerprint": self.fingerprint}
        others = {key: value for key, value in context.items() if key not in self.KEYS}
        return {**others, **{key: value for key, value in state.items() if value is not None}}

    def load(self) -> dict:
        return self.ours(self.read()[0])

    def update(self, **values: Any) -> None:
        for _ in range(CONTEXT_WRITE_ATTEMPTS):
            context, version = self.read()
            if self.write(self.with_state(context, **values), version):
                return
        raise AuthError("Could not save the token state: other runs kept changing the integration context.")

    def valid_access_token(self, state: dict, rejected: str | None = None) -> str | None:
        token, valid_until = state.get(f"{self.prefix}access_token"), state.get(f"{self.prefix}valid_until")
        if token and token != rejected and valid_until and self.clock.now() < float(valid_until):
            return str(token)
        return None

    def token_values(self, token: str, expires_in: int, refresh_token: str | None) -> dict:
        values: dict[str, Any] = {f"{self.prefix}access_token": token,
                                  f"{self.prefix}valid_until": self.clock.now() + token_reuse_seconds(expires_in)}
        if refresh_token is not None:
            values["current_refresh_token"] = refresh_token
        return values

    def clear(self) -> None:
        for _ in range(CONTEXT_WRITE_ATTEMPTS):
            context, version = self.read()
            if self.write({k: v for k, v in context.items() if k not in self.KEYS}, version):
                return


def token_reuse_seconds(expires_in: int) -> float:
    """How long a fresh token is reused: its lifetime less a margin, never less than half of it."""
    return max(expires_in - TOKEN_EXPIRY_MARGIN, expires_in / 2)


# ---- msal: imported on first use, its logging and HTTP under our control -------------------------

msal: Any = None  # the module, once require_msal() imported it: only the flows that need a token import it
MSAL_MINIMUM = "1.32"
TOKEN_REQUEST_RETRY_DELAYS = (1.0, 2.0, 4.0)  # Entra 5xx and connection errors: three retries, then an error
MAX_TOKEN_RETRY_AFTER = 30


class DebugLogHandler(logging.Handler):
    """Sends a library's log records to the redacting debug log instead of stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        log_debug(f"{record.name}: {message}")


def route_library_logging(name: str) -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(handler, DebugLogHandler) for handler in logger.handlers):
        logger.addHandler(DebugLogHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # nothing reaches the root logger, or stderr


def require_msal(flow: str) -> Any:
    """The msal module, imported now: importing it costs time the Cortex XSOAR app flow never needs."""
    global msal
    if msal is None:
        try:
            import msal as module
        except ImportError:
            raise ConfigurationError(
                f"{flow} needs the Python package msal {MSAL_MINIMUM} or newer, which this docker image lacks. Choose "
                "a docker image that carries msal for the integration, or use the Cortex XSOAR app flow.") from None
        route_library_logging("msal")
        msal = module
    return msal


class MsalHttpClient:
    """The requests session msal uses: our timeouts, proxy and certificate settings on every call, and
    bounded retries (via the injected clock) when Entra answers 5xx or the connection fails."""

    def __init__(self, session: requests.Session, network: Network, timeout: tuple[float, float], clock: Clock,
                 retry_connection_errors: bool = True, single_use_grants: bool = False):
        self.session, self.network, self.timeout, self.clock = session, network, timeout, clock
        self.retry_connection_errors = retry_connection_errors
        # An authorization code or a rotating refresh token is spent once Entra reads it: a POST that may have been
        # sent (read timeout, connection dropped) is not sent again, or the replay fails with invalid_grant.
        self.single_use_grants = single_use_grants

    def _may_retry(self, method: str, exc: requests.RequestException) -> bool:
        if not self.retry_connection_errors or isinstance(exc, requests.exceptions.SSLError):
            return False
        never_sent = isinstance(exc, requests.ConnectTimeout) or "Failed to establish a new connection" in str(exc)
        return never_sent or not (self.single_use_grants and method == "POST")

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        where = _display_url(url)
        for attempt, delay in enumerate((*TOKEN_REQUEST_RETRY_DELAYS, None), start=1):
            try:
                response = self.session.request(method, url, verify=self.network.verify,
                                                proxies=self.network.proxies, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if delay is None or not self._may_retry(method, exc):
                    raise
                log_debug(f"{method} {where}: {type(exc).__name__}; retry {attempt} in {delay:.0f}s")
            else:
                if response.status_code < 500 or delay is None:
                    return response
                delay = min(_retry_after(response, delay), MAX_TOKEN_RETRY_AFTER)
                log_debug(f"{method} {where}: HTTP {response.status_code}; retry {attempt} in {delay:.0f}s")
            self.clock.sleep(delay)
        raise AssertionError("unreachable")

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._send("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._send("POST", url, **kwargs)

    def close(self) -> None:  # msal calls this; the session belongs to the Client
        pass


def _retry_after(response: requests.Response, default: float) -> float:
    try:
        return max(float(response.headers.get("Retry-After", default)), 0.0)
    except ValueError:
        return default


def _display_url(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"


# ---- Entra errors --------------------------------------------------------------------------------

SECRET, CERTIFICATE = "client secret", "certificate"
CREDENTIAL_PARAMS = {SECRET: "Key (client secret)", CERTIFICATE: "Certificate Thumbprint and Private Key"}
RESET_STEPS = "Run !microsoft-atp-auth-reset, then !microsoft-atp-generate-login-url and sign in again."

# Entra error codes, and what the user should do about each. A dict value holds one hint per credential
# type: the advice must fit the credential in use.
AADSTS_HINTS: dict[int, str | dict[str, str]] = {
    7000215: "The client secret in Key is wrong. Copy the secret's Value (not its Secret ID) from the app "
             "registration's Certificates & secrets page.",
    7000222: "The client secret has expired. Create a new secret in the app registration and update Key.",
    700016: "No application with this ID exists in the tenant. Check ID (application/client ID) and Token "
            "(tenant ID), and that the app was granted admin consent in that tenant.",
    90002: "The tenant was not found. Check Token (the Directory/tenant ID) and the Endpoint Type.",
    900023: "The tenant ID is not valid. Check Token (the Directory/tenant ID).",
    65001: "Admin consent is missing. Grant admin consent for the app's WindowsDefenderATP API permissions.",
    500011: "The Defender API (WindowsDefenderATP) is not available in this tenant or cloud. Check the Endpoint "
            "Type and that Defender for Endpoint is provisioned.",
    700027: {CERTIFICATE: "The client assertion was rejected. Check that Certificate Thumbprint and Private Key "
                          "belong to a certificate uploaded to the app registration.",
             SECRET: "The client credential was rejected. Check Key (client secret)."},
    7000274: {CERTIFICATE: "The certificate's thumbprint is not registered with the app. Check Certificate "
                           "Thumbprint against the app registration's Certificates & secrets page."},
    50011: "The redirect URI does not match the app registration. Make Application redirect URI exactly equal "
           "to a redirect URI of the app.",
    70008: f"The authorization code or refresh token has expired. {RESET_STEPS}",
    54005: "The authorization code was already used. Run !microsoft-atp-generate-login-url, sign in, and paste "
           "the new code into Authorization code.",
    9002313: f"The authorization code or refresh token is invalid. {RESET_STEPS}",
    70000: f"The grant is invalid or was already used. {RESET_STEPS}",
}
# Without a known code: what to check, by credential type.
ERROR_HINTS = {
    "invalid_client": {SECRET: "Check ID (application/client ID) and Key (client secret).",
                       CERTIFICATE: "Check ID (application/client ID), Certificate Thumbprint and Private Key."},
}


def entra_error_message(result: dict, what: str, credential_type: str = "") -> str:
    """Turns an Entra/msal error dict into a sentence that says what to fix, for the credential in use."""
    description = str(result.get("error_description") or "")
    description = re.split(r"\s*(?:Trace ID|Correlation ID|Timestamp):", description)[0]
    codes = [int(c) for c in result.get("error_codes") or [] if str(c).isdigit()]
    match = re.match(r"AADSTS(\d+):\s*", description)
    if match:
        codes = codes or [int(match.group(1))]
        description = description[match.end():]
    code_text = f" AADSTS{codes[0]}" if codes else ""
    hints = [AADSTS_HINTS[c] for c in codes if c in AADSTS_HINTS] or [ERROR_HINTS.get(str(result.get("error")), "")]
    hint = next((h.get(credential_type, "") if isinstance(h, dict) else h for h in hints), "")
    message = f"Microsoft Entra ID refused {what} ({result.get('error', 'error')}{code_text}): {description}".rstrip()
    return REDACT(f"{message} {hint}".strip())


# ---- providers -----------------------------------------------------------------------------------


class TokenProvider:
    """One way of proving identity. Subclasses implement `_acquire()`; caching, single-flight and
    refresh live here."""

    flow = ""
    credential_type = ""  # what the hints talk about: SECRET, CERTIFICATE or nothing

    def __init__(self, settings: Any, session: requests.Session, store: TokenStore, network: Network = DEFAULT_NETWORK,
                 clock: Clock = SYSTEM_CLOCK):
        self.settings, self.session, self.store, self.network, self.clock = settings, session, store, network, clock
        self.run_id = secrets.token_hex(8)
        self.issued: str | None = None  # the token this run last handed out

    def validate(self) -> None:
        """Raise ConfigurationError naming the missing parameter."""

    def get_token(self, force_refresh: bool = False) -> str:
        """A valid token: the stored one, or a new one requested by exactly one of the runs that need it
        (the others wait for it). `force_refresh`: the API refused the token this run was given; a newer
        one another run saved is fine, that one never again."""
        rejected = self.issued if force_refresh else None
        self.issued = self._get_token(rejected)
        return self.issued

    def _get_token(self, rejected: str | None) -> str:
        self.validate()
        deadline = self.clock.now() + TOKEN_LEASE_SECONDS + TOKEN_LEASE_POLL
        while self.clock.now() < deadline:
            context, version = self.store.read()
            state = self.store.ours(context)
            token = self.store.valid_access_token(state, rejected)
            if token:
                REDACT.add(token)
                return token
            if self._leased_by_another_run(state.get(self.store.lease_key) or {}):
                self.clock.sleep(TOKEN_LEASE_POLL)  # another run is asking for the token right now
                continue
            lease = {"owner": self.run_id, "until": self.clock.now() + TOKEN_LEASE_SECONDS}
            claimed = self.store.with_state(context, **{self.store.lease_key: lease})
            if self.store.write(claimed, version):
                return self._acquire_and_save(state, rejected)
        raise AuthError("Another run of this instance is still requesting a token. Try the command again.")

    def _leased_by_another_run(self, lease: dict) -> bool:
        remaining = float(lease.get("until") or 0) - self.clock.now()
        # a lease reaching further than any run takes one for comes from a clock far off ours: ignore it
        return lease.get("owner") not in (None, self.run_id) and 0 < remaining <= TOKEN_LEASE_SECONDS

    def _acquire_and_save(self, state: dict, rejected: str | None) -> str:
        try:
            token, expires_in, refresh_token, extra = self._acquire(state, rejected)
        except BaseException:
            self.store.update(**{self.store.lease_key: None})
            raise
        REDACT.add(token, refresh_token)
        self.store.update(**self.store.token_values(token, expires_in, refresh_token), **extra,
                          **{self.store.lease_key: None})
        return token

    def reset(self) -> None:
        self.store.clear()

    def _acquire(self, state: dict, rejected: str | None) -> tuple[str, int, str | None, dict]:
        """A new token: (access token, lifetime in seconds, refresh token or None, other state to save)."""
        raise NotImplementedError

    single_use_grants = False  # the flow redeems codes or rotating refresh tokens (see MsalHttpClient)

    def _http_client(self, timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT), *,
                     retry_connection_errors: bool = True) -> MsalHttpClient:
        return MsalHttpClient(self.session, self.network, timeout, self.clock, retry_connection_errors,
                              self.single_use_grants)

    def _token_from(self, result: dict, what: str) -> tuple[str, int, str | None, dict]:
        if "access_token" not in result:
            raise AuthError(entra_error_message(result, what, self.credential_type))
        return result["access_token"], int(result.get("expires_in") or 3599), result.get("refresh_token"), {}


def _require(settings: Any, **names: str) -> None:
    missing = [label for attr, label in names.items() if not getattr(settings, attr)]
    if missing:
        raise ConfigurationError(f"{settings.flow}: set {', '.join(missing)} in the instance settings.")


class MsalConfidentialProvider(TokenProvider):
    """Shared by the two flows of a self-deployed Entra app (client credentials, authorization code)."""

    settings: ClientCredentialsSettings

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._app: Any = None  # msal.ConfidentialClientApplication, built on first use

    @property
    def credential_type(self) -> str:  # type: ignore[override]
        return CERTIFICATE if self.settings.uses_certificate else SECRET

    def validate(self) -> None:
        _require(self.settings, client_id="ID (application/client ID)", tenant_id="Token (tenant ID)")
        if not self.settings.client_secret and not self.settings.uses_certificate:
            raise ConfigurationError(f"{self.settings.flow}: set Key (client secret), or Certificate Thumbprint "
                                     "and Private Key.")

    def _credential(self) -> str | dict:
        if self.settings.uses_certificate:
            check_private_key(self.settings.private_key)
            return {"private_key": self.settings.private_key, "thumbprint": self.settings.thumbprint}
        return self.settings.client_secret

    @property
    def app(self) -> Any:
        # Built lazily: msal fetches the tenant's OpenID configuration when constructed.
        if self._app is None:
            module = require_msal(self.flow)
            authority = f"{self.settings.cloud.login_host}/{self.settings.tenant_id}"
            self._app = self._call_msal("the sign-in setup", lambda: module.ConfidentialClientApplication(
                self.settings.client_id, client_credential=self._credential(), authority=authority,
                http_client=self._http_client(), instance_discovery=False))
        return self._app

    def _call_msal(self, what: str, call: Callable[[], Any]) -> Any:
        """Runs one msal call; its exceptions become messages that name what to fix."""
        try:
            return call()
        except IntegrationError:
            raise
        except requests.RequestException as exc:
            raise AuthError("Could not reach the Microsoft login service: " + connection_error_message(
                exc, self.settings.cloud.login_host, check=LOGIN_HOST_CHECK)) from exc
        except Exception as exc:  # msal and PyJWT raise ValueError, MsalServiceError, InvalidKeyError, ...
            raise AuthError(REDACT(self._explain(exc, what))) from exc

    def _explain(self, exc: Exception, what: str) -> str:
        text = str(exc)
        status = re.search(r"HTTP Error: (\d{3})", text)
        if status and status.group(1).startswith("5"):
            return (f"Microsoft Entra ID failed {what} with HTTP {status.group(1)}, also after "
                    f"{len(TOKEN_REQUEST_RETRY_DELAYS)} retries. It is a problem on Microsoft's side: try again later.")
        if "authority configuration" in text or "tenant" in text.lower():
            return (f"Microsoft Entra ID does not know the tenant '{self.settings.tenant_id}' at "
                    f"{self.settings.cloud.login_host}. Check Token (the Directory/tenant ID) and the Endpoint Type.")
        if self.settings.uses_certificate and "key" in text.lower():
            return (f"Private Key could not be used for {what}: {text} Paste the certificate's PEM private key "
                    "(-----BEGIN PRIVATE KEY----- ...) into the password field of Certificate Thumbprint / Private Key.")
        return f"{what.capitalize()} failed: {type(exc).__name__}: {text}"

    @property
    def scopes(self) -> list[str]:
        return [self.settings.cloud.scope]


def check_private_key(pem: str) -> None:
    """Fails with a message naming the parameter when the private key is not a usable PEM key."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted with a passphrase" if "password" in str(exc).lower() else "it is not a PEM key"
        raise ConfigurationError(f"Private Key cannot be read ({reason}). Paste the certificate's unencrypted PEM "
                                 "private key (-----BEGIN PRIVATE KEY----- ...) into the password field of "
                                 "Certificate Thumbprint / Private Key.") from None


class ClientCredentialsProvider(MsalConfidentialProvider):
    flow = FLOW_CLIENT_CREDENTIALS

    def _acquire(self, state: dict, rejected: str | None) -> tuple[str, int, str | None, dict]:
        app = self.app
        if rejected:  # msal would answer from its own in-memory cache
            for token in list(app.token_cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                app.token_cache.remove_at(token)
        result = self._call_msal("the token request", lambda: app.acquire_token_for_client(scopes=self.scopes))
        token, expires_in, _, _ = self._token_from(result, "the client-credentials token request")
        return token, expires_in, None, {}


class AuthorizationCodeProvider(MsalConfidentialProvider):
    flow = FLOW_AUTH_CODE
    single_use_grants = True
    settings: AuthorizationCodeSettings

    def validate(self) -> None:
        super().validate()
        _require(self.settings, redirect_uri="Application redirect URI")

    def login_url(self) -> str:
        state = secrets.token_urlsafe(16)
        self.store.update(login_state=state)
        query = urlencode({
            "client_id": self.settings.client_id, "response_type": "code", "redirect_uri": self.settings.redirect_uri,
            "response_mode": "query", "scope": f"offline_access {self.settings.cloud.scope}", "state": state})
        return f"{self.settings.cloud.login_host}/{self.settings.tenant_id}/oauth2/v2.0/authorize?{query}"

    def _acquire(self, state: dict, rejected: str | None) -> tuple[str, int, str | None, dict]:
        refresh_token = state.get("current_refresh_token")
        if refresh_token and not self._new_sign_in(state):
            REDACT.add(refresh_token)
            result = self._redeem_refresh_token(refresh_token)
            latest = self.store.load().get("current_refresh_token")
            if "access_token" not in result and latest and latest != refresh_token:
                # another run rotated the refresh token after we read it: ours is spent, theirs is good
                REDACT.add(latest)
                result = self._redeem_refresh_token(latest)
            return self._token_from(result, "the refresh-token request")
        code = self._authorization_code(state)
        result = self._call_msal("the authorization-code exchange", lambda: self.app.acquire_token_by_authorization_code(
            code, scopes=self.scopes, redirect_uri=self.settings.redirect_uri))
        token, expires_in, new_refresh_token, _ = self._token_from(result, "the authorization code")
        return token, expires_in, new_refresh_token, {"used_auth_code": _digest(code)}

    def _new_sign_in(self, state: dict) -> bool:
        """A code other than the one that produced the stored refresh token was pasted: the user signed in again."""
        used = state.get("used_auth_code")
        return bool(used and self.settings.auth_code and _digest(self.settings.auth_code) != used)

    def _redeem_refresh_token(self, refresh_token: str) -> dict:
        return self._call_msal("the refresh-token request",
                               lambda: self.app.acquire_token_by_refresh_token(refresh_token, scopes=self.scopes))

    def _authorization_code(self, state: dict) -> str:
        code = self.settings.auth_code
        if not code:
            raise ConfigurationError(AUTH_CODE_STEPS)
        if re.search(r"[?&=\s]|session_state|^https?:", code):
            raise ConfigurationError(
                "Authorization code contains more than the code (e.g. '&session_state=' or the redirect URL). "
                "Paste only the value between 'code=' and the next '&' from the address you were redirected to.")
        if state.get("used_auth_code") == _digest(code):
            raise ConfigurationError("This authorization code was already exchanged and the refresh token is gone. "
                                     "Run !microsoft-atp-generate-login-url, sign in, and paste the new code.")
        return code


AUTH_CODE_STEPS = (
    "The Authorization Code flow needs a one-time sign-in: 1. run !microsoft-atp-generate-login-url; "
    "2. open the URL, sign in and consent; 3. copy the code= value from the address you are redirected to into "
    "the Authorization code parameter and save; 4. run !microsoft-atp-test to verify the connection.")

MANAGED_IDENTITY_HINT = ("Azure Managed Identities work only when the integration runs on an Azure resource that "
                         "has a managed identity assigned (for a user-assigned one, set its client ID).")


class ManagedIdentityProvider(TokenProvider):
    flow = FLOW_MANAGED_IDENTITY
    settings: ManagedIdentitySettings

    def _acquire(self, state: dict, rejected: str | None) -> tuple[str, int, str | None, dict]:
        module = require_msal(self.flow)
        client_id = self.settings.client_id
        identity = (module.UserAssignedManagedIdentity(client_id=client_id) if client_id
                    else module.SystemAssignedManagedIdentity())
        # off Azure the IMDS address does not answer: no retry of connection errors there
        http_client = self._http_client(MANAGED_IDENTITY_TIMEOUT, retry_connection_errors=False)
        client = module.ManagedIdentityClient(identity, http_client=http_client, token_cache=module.TokenCache())
        try:
            result = client.acquire_token_for_client(resource=self.settings.cloud.mi_resource)
        except requests.RequestException as exc:
            raise AuthError(f"Could not reach the Azure managed-identity endpoint ({type(exc).__name__}). "
                            + MANAGED_IDENTITY_HINT) from exc
        except Exception as exc:  # something that is not IMDS answered (e.g. a proxy's error page)
            log_debug(f"managed identity: {type(exc).__name__}: {exc}")
            raise AuthError("The Azure managed-identity endpoint did not answer with a token. "
                            + MANAGED_IDENTITY_HINT) from exc
        return self._token_from(result, "the managed-identity token request")


class XsoarAppProvider(TokenProvider):
    """The Cortex XSOAR app: the oproxy service exchanges our encrypted registration token for a token."""

    flow = FLOW_XSOAR_APP
    settings: XsoarAppSettings

    def validate(self) -> None:
        _require(self.settings, registration_id="ID (registration ID from the consent page)",
                 consent_token="Token (from the consent page)", encryption_key="Key (from the consent page)")

    def _acquire(self, state: dict, rejected: str | None) -> tuple[str, int, str | None, dict]:
        next_request_time = float(state.get("next_request_time") or 0)
        if self.clock.now() < next_request_time:
            wait_until = datetime.fromtimestamp(next_request_time, timezone.utc).isoformat(timespec="seconds")
            raise AuthError(f"The last token request to the XSOAR app service failed; the next attempt is delayed "
                            f"until {wait_until} to protect the service.")
        body = {"app_name": OPROXY_APP_NAME, "registration_id": self.settings.registration_id,
                "encrypted_token": self._encrypted_token(),
                "scope": "graph" if self.settings.cloud.scope == self.settings.cloud.graph_scope else None,
                "resource": ""}
        url = self.settings.token_url
        try:
            response = self.session.post(url, json=body, verify=self.network.verify, proxies=self.network.proxies,
                                         timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.RequestException as exc:
            self._back_off(state)
            raise AuthError(f"Could not reach the XSOAR app token service at {url}: {type(exc).__name__}.") from exc
        if not response.ok:
            self._back_off(state)
            raise AuthError(REDACT(f"The XSOAR app token service refused the request (HTTP {response.status_code}): "
                                   f"{_oproxy_error_text(response)} Check ID, Token and Key against the consent "
                                   f"page {CONSENT_URL}."))
        try:
            payload = response.json()
            token = payload["access_token"]
        except (ValueError, KeyError) as exc:
            raise AuthError("The XSOAR app token service answered without an access token.") from exc
        return token, int(payload.get("expires_in") or 3595), None, {"next_request_time": 0.0,
                                                                     "delay_request_counter": 1}

    def _encrypted_token(self) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only this flow encrypts

        try:
            key = base64.b64decode(self.settings.encryption_key, validate=True)
            aes = AESGCM(key)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError("Key is not a valid encryption key from the consent page (expected base64 of a "
                                     "16, 24 or 32 byte key).") from exc
        nonce = os.urandom(12)
        plaintext = f"{int(self.clock.now())}:{self.settings.consent_token}".encode()
        return base64.b64encode(nonce + aes.encrypt(nonce, plaintext, None)).decode()

    def _back_off(self, state: dict) -> None:
        counter = min(int(state.get("delay_request_counter") or 1), 6)
        self.store.update(next_request_time=self.clock.now() + 2 ** counter, delay_request_counter=counter + 1)


def _oproxy_error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        if body.get("message"):
            return str(body["message"])
        if body.get("title") or body.get("detail"):
            return f"{body.get('title', '')}. {body.get('detail', '')}".strip(". ")
    return json.dumps(body)[:300]


PROVIDERS: dict[str, type[TokenProvider]] = {
    FLOW_XSOAR_APP: XsoarAppProvider,
    FLOW_CLIENT_CREDENTIALS: ClientCredentialsProvider,
    FLOW_AUTH_CODE: AuthorizationCodeProvider,
    FLOW_MANAGED_IDENTITY: ManagedIdentityProvider,
}


def build_token_provider(settings: AuthSettings, session: requests.Session, network: Network = DEFAULT_NETWORK,
                         clock: Clock = SYSTEM_CLOCK, graph: bool = False) -> TokenProvider:
    """The flow's provider for the Defender API, or (graph) for Microsoft Graph: the same credential with Graph's
    scope and managed-identity resource, its token kept under graph_* keys."""
    store = TokenStore(credential_fingerprint(settings), clock, "graph_" if graph else "")
    if graph:
        cloud = settings.cloud
        settings = settings._replace(cloud=cloud._replace(scope=cloud.graph_scope, mi_resource=cloud.graph_audience))
    return PROVIDERS[settings.flow](settings, session, store, network, clock)


class BearerAuth(requests.auth.AuthBase):
    """Attaches the provider's token; the Client never knows which flow made it."""

    def __init__(self, provider: TokenProvider):
        self.provider = provider
        self.force_refresh = False  # set by the Client after a 401

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.provider.get_token(force_refresh=self.force_refresh)}"
        self.force_refresh = False
        return request


# ============================================================================================
# 4. Transport
# ============================================================================================


RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
STATUS_HINTS = {
    400: "Check the command arguments.",
    401: "The access token was rejected even after a refresh. Check the Endpoint Type and the credentials, "
         "then run !microsoft-atp-auth-reset.",
    403: "The app lacks the API permission for this call, or the machine is outside its device groups. "
         "Run !microsoft-atp-list-auth-permissions to see which permissions are missing.",
    404: "The object was not found.",
    429: "Microsoft's rate limit was still exceeded after waiting; run the command again later.",
}


def retry_after_seconds(response: requests.Response, attempt: int) -> float:
    """Seconds to wait after a 429: Retry-After, else the "again in N seconds" text, else exponential."""
    header = response.headers.get("Retry-After", "")
    if header.strip().isdigit():
        return max(1.0, float(header))
    match = re.search(r"again in (\d+) seconds", response.text or "")
    if match:
        return max(1.0, float(match.group(1)))
    return float(min(DEFAULT_RETRY_AFTER * 2 ** attempt, 60))


def quota_spent(response: requests.Response) -> bool:
    """A 429 for a spent processing (CPU) quota, not the call rate: it lasts up to 15 minutes, so it is reported
    rather than waited out (advanced hunting)."""
    return CPU_QUOTA_TEXT in (response.text or "")


def backoff_seconds(attempt: int) -> float:
    return float(2 ** (attempt - 1))


def api_error_from(response: requests.Response, method: str, path: str) -> ApiError:
    code, message, target = "", "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code, message, target = str(error.get("code") or ""), str(error.get("message") or ""), str(
            error.get("target") or "")
    elif isinstance(body, dict) and body.get("error"):
        code, message = str(body.get("error")), str(body.get("error_description") or body.get("message") or "")
    else:
        message = (response.text or response.reason or "")[:500]
    status = response.status_code
    retried = "it was retried. " if method == "GET" and status in RETRYABLE_STATUSES else ""
    hint = STATUS_HINTS.get(status, f"Microsoft's service failed; {retried}Try again later." if status >= 500 else "")
    text = f"{method} {path} failed with HTTP {status}{' ' + code if code else ''}: {message}".rstrip(": ")
    if hint:
        text += f". {hint}"
    if target:
        text += f" (correlation id: {target})"
    return ApiError(REDACT(text), status=status, code=code, target=target,
                    ambiguous=method != "GET" and status >= 500)


API_HOST_CHECK = "Check Server URL / Endpoint Type"
LOGIN_HOST_CHECK = "Check the Endpoint Type and, for a Custom endpoint, the Login URL parameter (login_url)"


def connection_error_message(exc: requests.RequestException, url: str, check: str = API_HOST_CHECK) -> str:
    """What went wrong on the way to a host, and which setting to look at."""
    host = urlparse(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return (f"TLS certificate verification failed for {host}. If a proxy re-signs traffic, point "
                "REQUESTS_CA_BUNDLE at its CA bundle, or select 'Trust any certificate (not secure)'.")
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"The proxy refused the connection to {host}. Check the system proxy, or clear 'Use system proxy'."
    if isinstance(exc, requests.Timeout):
        return f"Timed out talking to {host}. {check} and that the host is reachable."
    return f"Could not connect to {host} ({type(exc).__name__}). {check} and the network."


# XSOAR's "API Execution Metrics" dashboard: entry type 19, one count per outcome (the platform's names).
API_CALL_OUTCOMES = ("Successful", "QuotaError", "GeneralError", "AuthError", "ServiceError", "ConnectionError",
                     "ProxyError", "SSLError", "TimeoutError", "RetryError")
ENTRY_TYPE_EXECUTION_METRICS = 19
METRICS_MIN_SERVER_VERSION = (6, 8, 0)


def call_outcome(result: "requests.Response | Exception") -> str:
    """The dashboard's name for what one HTTP call ended in."""
    if isinstance(result, requests.Response):
        status = result.status_code
        if status < 400:
            return "Successful"
        if status == 429:
            return "QuotaError"
        if status in (401, 403):
            return "AuthError"
        return "ServiceError" if status >= 500 else "GeneralError"
    for kind, outcome in ((requests.exceptions.SSLError, "SSLError"), (requests.exceptions.ProxyError, "ProxyError"),
                          (requests.Timeout, "TimeoutError"), (requests.ConnectionError, "ConnectionError")):
        if isinstance(result, kind):  # SSL and proxy errors are connection errors too: the first match wins
            return outcome
    return "GeneralError"


class ApiCallMetrics:
    """Every HTTP call the Transport makes, counted once by its outcome. A call after which the Transport gives
    up retrying (5xx, 429 or a connection error it had already retried) counts as RetryError."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, result: "requests.Response | Exception", *, gave_up_retrying: bool = False) -> None:
        outcome = "RetryError" if gave_up_retrying else call_outcome(result)
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def entry(self) -> dict | None:
        if not self.counts:
            return None
        return {"Type": ENTRY_TYPE_EXECUTION_METRICS, "ContentsFormat": "text",
                "Contents": "Metrics reported successfully.",
                "APIExecutionMetrics": [{"Type": outcome, "APICallsCount": self.counts[outcome]}
                                        for outcome in API_CALL_OUTCOMES if outcome in self.counts]}


class Transport:
    """The one HTTP core: sends API calls with retries, rate-limit waits and one token refresh, pages through
    collections and downloads files, counting every call in `metrics`. Areas add their endpoint calls as mixins
    (see Client)."""

    def __init__(self, base_url: str, auth: BearerAuth, *, verify: bool = True, proxies: dict | None = None,
                 session: requests.Session | None = None, clock: Clock = SYSTEM_CLOCK,
                 timeout: tuple[int, int] = (CONNECT_TIMEOUT, READ_TIMEOUT)):
        self.api_url = urljoin(base_url.rstrip("/") + "/", "api")
        self.auth = auth
        self.verify = verify
        self.proxies = proxies or {}
        self.session = session or requests.Session()
        self.clock = clock
        self.timeout = timeout
        self.metrics = ApiCallMetrics()

    @property
    def provider(self) -> TokenProvider:
        return self.auth.provider

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
                files: dict | None = None, expect: type | None = dict, auth: "BearerAuth | None" = None,
                read_timeout: int | None = None) -> Any:
        """Sends one API call with the retry rules below and returns the parsed JSON. A success whose body is not
        what the endpoint documents (`expect`: a JSON object unless told otherwise; None accepts an empty body)
        is an error naming the endpoint and status, never a half-read result. `files` sends a multipart/form-data
        body instead of JSON (requests' `files` format). `auth` replaces the Defender token (Microsoft Graph
        calls); `read_timeout` the default read timeout."""
        url = path if path.startswith("https://") else f"{self.api_url}/{path.lstrip('/')}"
        query = urlencode(params, quote_via=_quote_odata) if params else None
        timeout = (self.timeout[0], read_timeout) if read_timeout else self.timeout
        response = self._send(method, url, query, json_body, files, auth or self.auth, timeout)
        if not response.ok:
            raise api_error_from(response, method, _display_path(url))
        if expect is None and (response.status_code == 204 or not response.content):
            return None
        where = f"{method} {_display_path(url)} answered HTTP {response.status_code}"
        if not response.content:
            raise ApiError(f"{where} with an empty body where Microsoft documents a JSON object.",
                           status=response.status_code, code="UnexpectedBody", ambiguous=method != "GET")
        try:
            body = json.loads(response.content)  # from the bytes: no decoded copy of a 20 MB page beside them
        except ValueError as exc:
            kind = "an HTML page" if "html" in response.headers.get("Content-Type", "").lower() else "a body"
            raise ApiError(f"{where} with {kind} that is not JSON; a proxy or gateway may have answered instead of "
                           "Microsoft.", status=response.status_code, code="UnexpectedBody",
                           ambiguous=method != "GET") from exc
        if expect is not None and not isinstance(body, expect):
            raise ApiError(f"{where} with a JSON {type(body).__name__} where Microsoft documents a JSON object.",
                           status=response.status_code, code="UnexpectedBody", ambiguous=method != "GET")
        return body

    def _send(self, method: str, url: str, query: str | None, json_body: Any, files: dict | None,
              auth: "BearerAuth", timeout: tuple[int, int]) -> requests.Response:
        """429, and 5xx with Retry-After: wait as told and retry (any method: Microsoft says the call was not
        processed). Other 5xx and connection errors: retry reads with backoff; a write that may have reached the
        server is not repeated, and its error is marked ambiguous so the caller can look for what it created.
        401: refresh the token once and retry."""
        attempt, waited, refreshed = 0, 0.0, False
        is_read = method == "GET"
        while True:
            try:
                response = self.session.request(method, url, params=query, json=json_body, files=files,
                                                auth=auth, verify=self.verify, proxies=self.proxies,
                                                timeout=timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                retryable = (is_read or isinstance(exc, requests.ConnectTimeout)) and not isinstance(
                    exc, requests.exceptions.SSLError)
                if retryable and attempt < MAX_RETRIES:
                    self.metrics.count(exc)
                    attempt += 1
                    log_debug(f"{method} {_display_path(url)}: {type(exc).__name__}, retry {attempt}")
                    self.clock.sleep(backoff_seconds(attempt))
                    continue
                self.metrics.count(exc, gave_up_retrying=attempt > 0)
                raise ApiError(connection_error_message(exc, url), ambiguous=not retryable) from exc
            status = response.status_code
            if status == 401 and not refreshed:
                self.metrics.count(response)
                refreshed = True
                auth.force_refresh = True
                log_debug(f"{method} {_display_path(url)}: 401, refreshing the token once")
                continue
            if (status == 429 and not quota_spent(response)) or (
                    status in RETRYABLE_STATUSES and response.headers.get("Retry-After")):
                delay = retry_after_seconds(response, attempt)
                if waited + delay <= MAX_RATE_LIMIT_WAIT:
                    self.metrics.count(response)
                    waited += delay
                    log_debug(f"{method} {_display_path(url)}: rate limited, waiting {delay:.0f}s")
                    self.clock.sleep(delay)
                    continue
            elif status in RETRYABLE_STATUSES and is_read and attempt < MAX_RETRIES:
                self.metrics.count(response)
                attempt += 1
                log_debug(f"{method} {_display_path(url)}: HTTP {status}, retry {attempt}")
                self.clock.sleep(backoff_seconds(attempt))
                continue
            retried = attempt > 0 or waited > 0
            self.metrics.count(response, gave_up_retrying=retried and (status == 429 or status in RETRYABLE_STATUSES))
            return response

    def paginate(self, path: str, params: dict | None = None, *, limit: int | None = None, offset: int = 0,
                 page_size: int = MAX_PAGE_SIZE) -> Iterator[dict]:
        """Yields the items of an OData collection: follows @odata.nextLink when Microsoft sends one (on the host
        asked), otherwise asks $top/$skip pages until a short page; stops on repeated links or pages. A page's
        records are handed over one by one and not kept, so a walk of 50,000 machines holds one page at most."""
        url, skip, remaining = path, offset, limit
        seen_links: set[str] = set()
        previous_first: Any = None
        for _ in range(MAX_PAGES):
            top = page_size if remaining is None else min(page_size, remaining)
            if top <= 0:
                return
            page_params = {**(params or {}), "$top": top, "$skip": skip} if url == path else None
            body = self.request("GET", url, params=page_params)
            page, next_link = body.pop("value", None) or [], body.get("@odata.nextLink")
            del body
            first = page[0].get("id", json.dumps(page[0], sort_keys=True)) if page else None
            if page and first == previous_first:
                log_debug(f"GET {path}: the same page came back twice; stopping")
                return
            previous_first, served = first, len(page)
            if remaining is not None:
                del page[remaining:]
                remaining -= len(page)
            page.reverse()
            while page:
                yield page.pop()  # the caller maps it; the raw record is not kept here
            if next_link:
                if not same_origin(next_link, url if url.startswith("https://") else self.api_url):
                    log_debug(f"GET {path}: not following a next link to another host ({_display_path(next_link)})")
                    return
                if next_link in seen_links:
                    return
                seen_links.add(next_link)
                url = next_link
                continue
            if served < top:
                return
            skip += served
        log_debug(f"GET {path}: stopped after {MAX_PAGES} pages")

    def get_values(self, path: str) -> list[dict]:
        """GET an endpoint that answers `{"value": [...]}` in one response (no paging)."""
        return (self.request("GET", path) or {}).get("value") or []

    def download(self, url: str) -> bytes:
        """Fetches a short-lived download link (no bearer token: the link carries its own signature)."""
        try:
            response = self.session.get(url, verify=self.verify, proxies=self.proxies, timeout=self.timeout)
        except requests.RequestException as exc:
            self.metrics.count(exc)
            raise ApiError(connection_error_message(exc, url)) from exc
        self.metrics.count(response)
        if not response.ok:
            raise ApiError(f"Downloading {urlparse(url).netloc}{urlparse(url).path} failed with HTTP "
                           f"{response.status_code}. The link may have expired; request a new one.")
        return response.content


def _quote_odata(value: str, safe: str = "", encoding: str | None = None, errors: str | None = None) -> str:
    return quote(value, safe="$'(),:/", encoding=encoding, errors=errors)


UNSAFE_IN_SEGMENT = re.compile(r"[/\\?#%\x00-\x1f\x7f]")


def segment(value: Any, name: str) -> str:
    """A value placed in a URL path as exactly one segment, percent-encoded (IPv6 colons, quotes, spaces).
    Values the HTTP stack would reinterpret (empty, `.`, `..`, `/`, `\\`, `?`, `#`, `%`) are refused, naming the
    argument, before any request: `users/..` would otherwise become `/api/` and answer for everyone."""
    text = str(value)
    if text.strip() in ("", ".", "..") or UNSAFE_IN_SEGMENT.search(text):
        raise ArgumentError(f"{name} cannot be used as '{text}': it must not be empty, '.' or '..', nor contain "
                            "/, \\, ?, # or %.")
    return quote(text, safe="")


def same_origin(url: str, reference: str) -> bool:
    """Whether `url` is on the host that was asked (the bearer token goes only there)."""
    target, origin = urlparse(url), urlparse(reference)
    return target.scheme == "https" and (target.hostname, target.port) == (origin.hostname, origin.port)


def _display_path(url: str) -> str:
    path = urlparse(url).path
    return path[path.find("/api/") + 4:] if "/api/" in path else path


# ============================================================================================
# 5. Shared helpers: arguments, validators, OData, entity specs and results, the registry
# ============================================================================================


TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0", "none")


def arg_to_bool(value: Any, name: str, default: bool = False) -> bool:
    """A checkbox or boolean argument; anything but true/false (yes/no, 1/0) is an error naming `name`."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS or text in FALSE_WORDS or text == "":
        return text in TRUE_WORDS if text else default
    raise ArgumentError(f"{name} must be true or false (got '{value}').")


def arg_to_int(value: Any, name: str, *, default: int | None = None, minimum: int | None = None,
               maximum: int | None = None) -> int | None:
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ArgumentError(f"{name} must be a whole number (got '{value}').") from None
    if minimum is not None and number < minimum:
        raise ArgumentError(f"{name} must be at least {minimum} (got {number}).")
    if maximum is not None and number > maximum:
        raise ArgumentError(f"{name} must be at most {maximum} (got {number}).")
    return number


def arg_to_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        items = value
    else:
        text = str(value).strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                items = text.strip("[]").split(",")
        else:
            items = text.split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def arg_choice(value: Any, name: str, allowed: Iterable[str], default: str | None = None) -> str | None:
    """The allowed value that matches `value` case-insensitively, in Microsoft's spelling."""
    if value is None or str(value).strip() == "":
        return default
    by_lower = {option.lower(): option for option in allowed}
    choice = by_lower.get(str(value).strip().lower())
    if choice is None:
        raise ArgumentError(f"{name} must be one of {', '.join(by_lower.values())} (got '{value}').")
    return choice


def arg_choices(value: Any, name: str, allowed: Iterable[str]) -> list[str]:
    """Every value of a list or comma-separated string, each checked like `arg_choice`."""
    allowed = list(allowed)
    return [str(arg_choice(item, name, allowed)) for item in arg_to_list(value)]


def arg_required(args: dict, name: str) -> str:
    value = str(args.get(name) or "").strip()
    if not value:
        raise ArgumentError(f"{name} is required.")
    return value


RELATIVE_TIME = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week|month|year)s?(?:\s+ago)?\s*$", re.I)
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000,
                "year": 31536000}


def arg_to_datetime(value: Any, name: str, *, now: datetime | None = None) -> datetime | None:
    """Parses ISO 8601 (`2024-05-01T10:00:00Z`) or relative times (`3 days`, `12 hours ago`) into UTC."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        match = RELATIVE_TIME.match(text)
        if match:
            seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()]
            return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
        return parse_iso_datetime(text)
    except OverflowError:  # "5000 years": before year 1
        raise ArgumentError(f"{name} reaches too far back (got '{value}'); give a time after the year 2000.") from None
    except ValueError:
        raise ArgumentError(f"{name} must be an ISO 8601 time such as 2024-05-01T10:00:00Z or a relative time "
                            f"such as '3 days' (got '{value}').") from None


def parse_iso_datetime(text: str) -> datetime:
    """Parses Microsoft's timestamps, which carry up to 7 fractional digits, into aware UTC datetimes."""
    text = text.strip().replace(" ", "T", 1) if re.match(r"^\d{4}-\d\d-\d\d \d", text.strip()) else text.strip()
    text = re.sub(r"[Zz]$", "+00:00", text)
    # Python 3.10's fromisoformat takes exactly 3 or 6 fractional digits; Microsoft sends 1 to 7
    text = re.sub(r"(:\d\d)\.(\d+)", lambda m: f"{m[1]}.{m[2][:6]:0<6}", text)
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def format_datetime(value: datetime) -> str:
    """UTC in the form Microsoft's OData filters accept: 2024-05-01T10:00:00.123Z."""
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def required_choice(args: dict, name: str, allowed: Iterable[str]) -> str:
    choice = arg_choice(args.get(name), name, allowed)
    if choice is None:
        raise ArgumentError(f"{name} is required: one of {', '.join(allowed)}.")
    return choice


MACHINE_ID = re.compile(r"^[0-9a-fA-F]{40}$")
SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


def validate_machine_id(value: str, name: str = "machine_id") -> str:
    if not MACHINE_ID.match(value):
        raise ArgumentError(f"{name} must be a machine ID of 40 hexadecimal characters (got '{value}'). "
                            "Find IDs with !microsoft-atp-get-machines.")
    return value.lower()


def validate_sha1(value: str, name: str = "file_hash") -> str:
    if not SHA1.match(value):
        raise ArgumentError(f"{name} must be a SHA-1 hash of 40 hexadecimal characters (got '{value}').")
    return value.lower()


def validate_ip(value: str, name: str = "ip") -> str:
    """An IPv4 or IPv6 address; IPv6 zone ids (`fe80::1%eth0`) are refused: Microsoft does not record them."""
    try:
        if "%" in value:
            raise ValueError(value)
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ArgumentError(f"{name} must be an IPv4 or IPv6 address without a zone id (got '{value}').") from None


DOMAIN_NAME = re.compile(r"^(?=.{1,253}$)\w(?:[\w-]{0,61}\w)?(?:\.\w(?:[\w-]{0,61}\w)?)*\.?$")  # IDNs too


def validate_domain(value: str, name: str = "domain") -> str:
    if not DOMAIN_NAME.match(value.strip()):
        raise ArgumentError(f"{name} must be a domain name such as contoso.com, without scheme or path "
                            f"(got '{value}').")
    return value.strip()


OBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # alert and investigation ids (da6374..._-1364)
# Windows account names cannot hold these characters (nor '@': users are looked up by account name, not UPN).
ACCOUNT_NAME = re.compile(r'^[^"/\\\[\]:;|=,+*?<>@%#\x00-\x1f]{1,104}$')


def validate_object_id(value: str, name: str, what: str) -> str:
    if not OBJECT_ID.match(value.strip()):
        raise ArgumentError(f"{name} must be {what} ID: letters, digits, '-' and '_' (got '{value}').")
    return value.strip()


def validate_account_name(value: str, name: str = "username") -> str:
    text = value.strip()
    if "@" in text:
        raise ArgumentError(f"{name} must be the account name (e.g. jdoe), not a UPN or e-mail address (got "
                            f"'{value}'): Microsoft looks users up by account name.")
    text = text.rsplit("\\", 1)[-1]  # DOMAIN\jdoe -> jdoe
    if text in (".", "..") or not ACCOUNT_NAME.match(text):
        raise ArgumentError(f"{name} must be a Windows account name such as jdoe (got '{value}').")
    return text


def odata_literal(value: Any) -> str:
    """An OData literal: strings quoted with ' doubled, datetimes unquoted in UTC, booleans lower-case."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, datetime):
        return format_datetime(value)
    return "'" + str(value).replace("'", "''") + "'"


class ODataFilter:
    """Builds a `$filter` from clauses joined by `and` (and `or` groups via any_of), escaping every literal; fields are checked
    against the ones the endpoint supports so a typo fails here, not at Microsoft."""

    OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")

    def __init__(self, fields: Iterable[str] | None = None):
        self.fields = frozenset(fields) if fields is not None else None
        self.clauses: list[str] = []
        self.or_groups: set[int] = set()  # clauses that are `or` groups, parenthesized to combine with `and`

    def _field(self, name: str) -> str:
        if self.fields is not None and name not in self.fields:
            raise ValueError(f"'{name}' cannot be filtered on here; supported: {', '.join(sorted(self.fields))}")
        return name

    def compare(self, name: str, operator: str, value: Any) -> "ODataFilter":
        if operator not in self.OPERATORS:
            raise ValueError(f"unsupported OData operator {operator}")
        if value is not None and value != "":
            self.clauses.append(f"{self._field(name)} {operator} {odata_literal(value)}")
        return self

    def eq(self, name: str, value: Any) -> "ODataFilter":
        return self.compare(name, "eq", value)

    def one_of(self, name: str, values: Iterable[Any]) -> "ODataFilter":
        """`name eq v` for one value, `name in (v1, v2)` for several; nothing for none."""
        values = [v for v in values if v is not None and v != ""]
        if len(values) == 1:
            return self.eq(name, values[0])
        if values:
            self.clauses.append(f"{self._field(name)} in ({', '.join(odata_literal(v) for v in values)})")
        return self

    def contains(self, name: str, text: str | None) -> "ODataFilter":
        if text:
            self.clauses.append(f"contains({self._field(name)},{odata_literal(text)})")
        return self

    def startswith_any(self, name: str, prefixes: Iterable[str]) -> "ODataFilter":
        parts = [f"startswith({self._field(name)},{odata_literal(p)})" for p in prefixes if p]
        if parts:
            self.clauses.append(parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")")
        return self

    def any_of(self, *alternatives: "ODataFilter") -> "ODataFilter":
        """One clause that holds when any of the alternatives holds: `(a) or (b)`; empty ones are skipped."""
        built = [alternative for alternative in alternatives if alternative.clauses]
        if len(built) == 1:  # kept as it is, an `or` group with its parentheses
            if built[0].is_or_group():
                self.or_groups.add(len(self.clauses))
            self.clauses.append(" and ".join(built[0].clauses))
        elif built:
            self.or_groups.add(len(self.clauses))
            self.clauses.append("(" + " or ".join(f"({' and '.join(b.clauses)})" for b in built) + ")")
        return self

    def is_or_group(self) -> bool:
        return len(self.clauses) == 1 and self.or_groups == {0}

    def verbatim(self, clause: str | None) -> "ODataFilter":
        """A clause the user wrote in OData (e.g. the `filters` argument), kept whole in parentheses."""
        if clause:
            self.clauses.append(f"({clause})")
        return self

    def build(self) -> str | None:
        if self.is_or_group():
            return self.clauses[0][1:-1]  # a lone `or` group needs no outer parentheses
        return " and ".join(self.clauses) or None


Failures = list[tuple[str, str]]  # (item, why it failed)


def call_for_each(items: list[str], call: Callable[[str], Any], what: str) -> tuple[list[tuple[str, Any]], Failures]:
    """Calls the API once per item and keeps going past failures; fails only when every item failed."""
    done: list[tuple[str, Any]] = []
    failed: Failures = []
    for item in items:
        try:
            done.append((item, call(item)))
        except IntegrationError as exc:  # an invalid value or an API error: that item's failure
            failed.append((item, str(exc)))
    if failed and not done:
        raise IntegrationError(f"{what} failed for every item:\n" + "\n".join(f"- {i}: {e}" for i, e in failed))
    return done, failed


class Paging(NamedTuple):
    limit: int | None  # None: every match
    offset: int


def paging_args(args: dict, default_limit: int = 50, *, zero_means_all: bool = False) -> Paging:
    """The paging arguments every list command shares. `all_results` (or `limit=0` where the command says so)
    walks every match; `limit` with `offset` (`skip` in the indicator commands, or `page` counted in pages of
    `limit`) gives a slice; `page_size` with `page_num` is the same in pages; without any of them, the first
    `default_limit` records."""
    if arg_to_bool(args.get("all_results"), "all_results"):
        return Paging(None, 0)
    limit = arg_to_int(args.get("limit"), "limit", minimum=0 if zero_means_all else 1)
    offset_name = "skip" if args.get("offset") in (None, "") and "skip" in args else "offset"
    offset = arg_to_int(args.get(offset_name), offset_name, minimum=0)
    if limit == 0:
        return Paging(None, int(offset or 0))
    page = arg_to_int(args.get("page"), "page", minimum=1)
    page_size = arg_to_int(args.get("page_size"), "page_size", minimum=1, maximum=MAX_PAGE_SIZE)
    page_num = arg_to_int(args.get("page_num"), "page_num", minimum=1)
    if limit is None and (page_size is not None or page_num is not None):
        size = int(page_size or default_limit)
        return Paging(size, (int(page_num or 1) - 1) * size)
    limit = int(limit or default_limit)
    if offset is None:
        offset = (int(page) - 1) * limit if page else 0
    return Paging(limit, int(offset))


# Output mapping is data: per entity, Microsoft's camelCase field -> the context key playbooks read.
class EntitySpec(NamedTuple):
    """How one kind of API record appears in context and in tables."""

    fields: dict[str, Any]  # API field -> context key, or (context key, nested EntitySpec) for objects and lists
    path: str = ""  # context path under the integration's prefix, e.g. "Machine"
    key: tuple[str, ...] = ("ID",)  # the fields that identify a record in context (the merge rule)
    headers: tuple[str, ...] = ()  # table columns; every mapped key when empty
    derived: Callable[[dict], dict] | None = None  # context keys computed from the whole record

    def context_key(self, path: str | None = None, key: tuple[str, ...] | None = None) -> str:
        return context_key(f"{CONTEXT_PREFIX}.{path or self.path}", *(self.key if key is None else key))

    def extend(self, **changes: Any) -> "EntitySpec":
        return self._replace(**changes)


# Short values (statuses, platforms, scores, group names) repeat across records; one shared copy of each keeps a
# 50,000-machine listing inside its memory budget.
SHARED_VALUE_MAX = 16


def to_context(record: dict | None, spec: EntitySpec) -> dict:
    """Maps one API record to context keys with the entity's field table; unknown fields are dropped."""
    if not isinstance(record, dict) or not record:
        return {}
    mapped: dict[str, Any] = {}
    for api_name, target in spec.fields.items():
        key = target[0] if isinstance(target, tuple) else target
        if api_name not in record or (record[api_name] is None and key in mapped):
            continue  # a key fed by two API names (Microsoft spells some fields two ways): null never wins
        value = record[api_name]
        if isinstance(target, tuple):
            nested = target[1]
            if isinstance(value, list):
                value = [to_context(item, nested) if isinstance(item, dict) else item for item in value]
            elif isinstance(value, dict):
                value = to_context(value, nested)
        mapped[key] = sys.intern(value) if type(value) is str and len(value) <= SHARED_VALUE_MAX else value
    if spec.derived:
        mapped.update(spec.derived(record))
    return mapped


def context_key(path: str, *key_fields: str) -> str:
    """A context path with its merge rule: records with equal key fields replace each other."""
    if not key_fields:
        return path
    rule = " && ".join(f"val.{name} && val.{name} == obj.{name}" if i == 0 else f"val.{name} == obj.{name}"
                       for i, name in enumerate(key_fields))
    return f"{path}({rule})"


TABLE_ROW_LIMIT = 50  # rows shown in a War Room table; every record is still in context
TABLE_CHAR_LIMIT = 100_000  # markdown characters per table


def markdown_table(title: str, rows: list[dict] | dict, headers: Iterable[str] | None = None,
                   total: int | None = None, where: str = "context") -> str:
    """A markdown table as the War Room shows it, at most TABLE_ROW_LIMIT rows and TABLE_CHAR_LIMIT characters;
    nested values are shown as compact JSON. `total` counts rows that were not even passed in."""
    rows = [rows] if isinstance(rows, dict) else rows
    lines = [f"### {title}"] if title else []
    if not rows:
        return "\n".join([*lines, "**No entries.**"])
    headers = list(headers or dict.fromkeys(key for row in rows[:TABLE_ROW_LIMIT] for key in row))

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            value = ", ".join(map(str, value)) if isinstance(value, list) and all(
                not isinstance(v, (dict, list)) for v in value) else json.dumps(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines.append("|" + "|".join(headers) + "|")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    size, shown = sum(len(line) + 1 for line in lines), 0
    for row in rows[:TABLE_ROW_LIMIT]:
        line = "|" + "|".join(cell(row.get(h)) for h in headers) + "|"
        if size + len(line) > TABLE_CHAR_LIMIT:
            break
        lines.append(line)
        size, shown = size + len(line) + 1, shown + 1
    total = len(rows) if total is None else total
    if shown < total:
        lines.append(f"\nShowing {shown} of {total} rows; all {total} are in {where}. Narrow the query, or page "
                     "with limit and offset (or page_size and page_num), to see other rows here.")
    return "\n".join(lines)


class ScheduledCommand(NamedTuple):
    """Asks the platform to run `command` again with `args` after `next_run` seconds."""

    command: str
    next_run: int
    args: dict
    timeout: int


class CommandResult:
    """What a command returns; commands adjust the text or outputs before it becomes an entry."""

    __slots__ = ("readable", "outputs", "raw", "scheduled")

    def __init__(self, readable: str, outputs: dict | None = None, raw: Any = None,
                 scheduled: ScheduledCommand | None = None) -> None:
        self.readable = readable
        self.outputs = {} if outputs is None else outputs  # context key (with merge rule) -> value
        self.raw = raw
        self.scheduled = scheduled

    def to_entry(self) -> dict:
        entry = {"Type": 1, "ContentsFormat": "json", "Contents": self.raw if self.raw is not None else {},
                 "HumanReadable": self.readable, "ReadableContentsFormat": "markdown",
                 "EntryContext": self.outputs}
        if self.scheduled:
            entry.update(PollingCommand=self.scheduled.command, NextRun=str(self.scheduled.next_run),
                         PollingArgs=self.scheduled.args, Timeout=str(self.scheduled.timeout))
        return entry


RAW_RECORD_LIMIT = TABLE_ROW_LIMIT  # past this many records, Contents says where they are instead of copying them


def entity_result(spec: EntitySpec, records: Iterable[dict] | dict | None, title: str, *, path: str | None = None,
                  group: tuple[str, Any, str] | None = None, extra: Callable[[dict], dict] | None = None,
                  failed: Failures | None = None, failure_label: str = "Item") -> CommandResult:
    """The one way a command returns records: each mapped with `spec` into context (`extra` adds keys per record),
    a bounded table, and the raw records. `group=(key field, key, items key)` writes
    `{key field: key, items key: records}` under the path, as the older integration did for a file's or a
    user's alerts. Records may be an iterator: pages are mapped as they arrive and raw copies are not kept
    past RAW_RECORD_LIMIT, so a 50,000-machine listing holds one mapped copy."""
    single = isinstance(records, dict)
    rows: list[dict] = []
    raw: list[dict] = []
    count = 0
    for record in ([records] if single else records or []):
        if not isinstance(record, dict) or not record:
            continue
        count += 1
        rows.append({**to_context(record, spec), **(extra(record) if extra else {})})
        if count <= RAW_RECORD_LIMIT:
            raw.append(record)
    path = path or spec.path
    outputs: dict[str, Any] = {}
    if group:
        key_field, key, items_key = group
        outputs[context_key(f"{CONTEXT_PREFIX}.{path}", key_field)] = {
            key_field: key, items_key: (rows[0] if rows else {}) if single else rows}
    elif rows:
        outputs[spec.context_key(path)] = rows
    readable = markdown_table(title, rows, spec.headers or None, where=f"context under {CONTEXT_PREFIX}.{path}")
    readable += failures_readable(failed or [], failure_label)
    contents: Any = (raw[0] if raw else {}) if single else raw
    if count > RAW_RECORD_LIMIT:
        contents = {"count": count, "context_path": f"{CONTEXT_PREFIX}.{path}",
                    "note": f"{count} records: mapped into context; the first {RAW_RECORD_LIMIT} are in 'sample'.",
                    "sample": raw}
    return CommandResult(readable, outputs, raw=contents)


def failures_readable(failed: Failures, label: str) -> str:
    if not failed:
        return ""
    return "\n\n" + markdown_table("Failed", [{label: item, "Error": error} for item, error in failed])


def file_entry(filename: str, data: bytes) -> dict:
    """Writes the bytes where the platform collects files and returns the file entry."""
    file_id = demisto.uniqueFile()
    with open(f"{demisto.investigation()['id']}_{file_id}", "wb") as handle:
        handle.write(data)
    return {"Type": 3, "File": filename, "FileID": file_id, "Contents": "", "ContentsFormat": "text"}


def jwt_claims(token: str) -> dict:
    """The claims of a JWT, read without verifying it (we only display them)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise AuthError("The access token is not a JWT, so its permissions cannot be listed.") from exc


class Command(NamedTuple):
    func: Callable[..., Any]
    roles: tuple[str, ...] = ()  # any one of these application permissions allows the command
    takes_params: bool = False  # test-module and fetch-incidents read the instance parameters, not arguments


COMMANDS: dict[str, Command] = {}  # filled by @command in each area's region; main() dispatches from it


def command(name: str, roles: Iterable[str] = (), *, takes_params: bool = False) -> Callable:
    """Registers the decorated function as the implementation of the yml command `name`."""
    def register(func: Callable) -> Callable:
        if name in COMMANDS:
            raise RuntimeError(f"{name} is registered twice")
        COMMANDS[name] = Command(func, tuple(roles), takes_params)
        return func
    return register


# Application permissions that commands of several areas need.
MACHINE_READ = ("Machine.Read.All", "Machine.ReadWrite.All")
ALERT_READ = ("Alert.Read.All", "Alert.ReadWrite.All")


# ============================================================================================
# 6.1 Auth and connection
# ============================================================================================


def check_connection(client: "Client") -> None:
    """One cheap call that needs a token and an API permission."""
    client.list_alerts(limit=1)


@command("test-module", ALERT_READ, takes_params=True)
def test_module_command(client: "Client", params: dict) -> str:
    """The Test button: the connection, and the fetch settings when fetching is on."""
    if arg_to_bool(params.get("isFetch"), "isFetch (Fetch incidents)"):
        fetch_settings_from_params(params, now=client.clock.utcnow())
    if client.provider.flow == FLOW_AUTH_CODE:
        # The Test button's run does not keep the integration context, so exchanging the one-time
        # code here would burn it. Explain the steps instead.
        raise ConfigurationError("The Test button cannot be used with the Authorization Code flow, because the "
                                 "one-time code would be consumed without saving the refresh token. "
                                 + AUTH_CODE_STEPS)
    check_connection(client)
    return "ok"


@command("microsoft-atp-test", ALERT_READ)
def test_connection_command(client: "Client", args: dict) -> CommandResult:
    check_connection(client)
    return CommandResult(readable="✅ Success! The integration reached the Defender API with a valid token.")


@command("microsoft-atp-generate-login-url")
def generate_login_url_command(client: "Client", args: dict) -> CommandResult:
    provider = client.provider
    if not isinstance(provider, AuthorizationCodeProvider):
        raise ConfigurationError("!microsoft-atp-generate-login-url is for the Authorization Code flow. Set "
                                 "Authentication Flow to 'Authorization Code' first.")
    provider.validate()
    url = provider.login_url()
    readable = (
        "### Authorization instructions\n"
        f"1. Open this link and sign in with an account that can consent: [login URL]({url})\n"
        "2. You are redirected to your redirect URI, e.g. "
        f"`{provider.settings.redirect_uri}?code=AUTH_CODE&state=...&session_state=...`.\n"
        "3. Copy only the AUTH_CODE part into the **Authorization code** parameter and save the instance.\n"
        "4. Run **!microsoft-atp-test** to finish the sign-in and verify the connection.")
    return CommandResult(readable=readable, raw={"login_url": url})


@command("microsoft-atp-auth-reset")
def auth_reset_command(client: "Client", args: dict) -> CommandResult:
    client.provider.reset()
    return CommandResult(readable="Authorization was reset: stored access and refresh tokens were removed. "
                                  "Update the credentials if needed, then run !microsoft-atp-test (or press Test).")


@command("microsoft-atp-list-auth-permissions")
def list_auth_permissions_command(client: "Client", args: dict) -> CommandResult:
    claims = jwt_claims(client.provider.get_token())
    defender = set(claims.get("roles") or []) | set(str(claims.get("scp") or "").split())
    graph_read, graph_problem = client.graph_roles()
    graph = graph_read if graph_read is not None else set()
    graph_problem = graph_problem or ("the Microsoft Graph token cannot be read" if graph_read is None else
                                      "the Microsoft Graph token carries no permissions")
    granted = defender | graph
    blocked: dict[str, list[str]] = {}
    for name, spec in COMMANDS.items():
        if spec.roles and not granted & set(spec.roles):
            blocked.setdefault(" or ".join(spec.roles), []).append(name)
    rows = [{"Missing permission": roles, "Commands it blocks": ", ".join(sorted(commands))}
            for roles, commands in sorted(blocked.items())]
    readable = markdown_table("Permissions", [{"Permission": role} for role in sorted(defender)])
    readable += "\n\n" + (markdown_table("Microsoft Graph permissions", [{"Permission": r} for r in sorted(graph)])
                          if graph else f"### Microsoft Graph permissions\nNone: {graph_problem}.")
    readable += "\n\n" + (markdown_table("Missing permissions", rows) if rows
                          else "All commands of this integration are permitted.")
    return CommandResult(readable=readable, raw={"roles": sorted(defender), "graph_roles": sorted(graph),
                                                 "missing": rows})


# ============================================================================================
# 6.2 Machines
# ============================================================================================


MACHINE_FILTER_FIELDS = ("computerDnsName", "id", "version", "deviceValue", "aadDeviceId", "machineTags", "lastSeen",
                         "exposureLevel", "onboardingStatus", "lastIpAddress", "healthStatus", "osPlatform",
                         "riskScore", "rbacGroupId")
HEALTH_STATUSES = ("Active", "Inactive", "ImpairedCommunication", "NoSensorData", "NoSensorDataImpairedCommunication",
                   "Unknown")
RISK_SCORES = ("None", "Informational", "Low", "Medium", "High")
TAG_ACTIONS = ("Add", "Remove")
FIND_BY_IP_MAX_AGE = timedelta(days=30)  # Microsoft answers 400 for older timestamps
CLOCK_SKEW = timedelta(minutes=5)


ENDPOINT_KEY = "Endpoint(val.ID && val.ID == obj.ID && val.Vendor == obj.Vendor)"


MACHINE_IP_ADDRESS = EntitySpec({
    "ipAddress": "ipAddress", "macAddress": "MACAddress", "operationalStatus": "operationalStatus", "type": "type",
})


def network_interfaces(machine: dict) -> dict:
    """The machine's addresses grouped by network adapter (MAC address), as `NetworkInterfaces`."""
    by_mac: dict[str, dict] = {}
    for address in machine.get("ipAddresses") or []:
        mac = address.get("macAddress") or ""
        interface = by_mac.setdefault(mac, {"MACAddress": mac, "IPAddresses": [], "Type": address.get("type"),
                                            "Status": address.get("operationalStatus")})
        if address.get("ipAddress"):
            interface["IPAddresses"].append(address["ipAddress"])
    return {"NetworkInterfaces": list(by_mac.values())} if by_mac else {}


MACHINE = EntitySpec({
    "id": "ID", "computerDnsName": "ComputerDNSName", "firstSeen": "FirstSeen", "lastSeen": "LastSeen",
    "osPlatform": "OSPlatform", "osVersion": "OSVersion", "version": "OSVersion", "osProcessor": "OSProcessor",
    "osArchitecture": "OSArchitecture", "osBuild": "OSBuild", "lastIpAddress": "LastIPAddress",
    "lastExternalIpAddress": "LastExternalIPAddress", "healthStatus": "HealthStatus",
    "onboardingStatus": "OnboardingStatus", "rbacGroupId": "RBACGroupID", "rbacGroupName": "RBACGroupName",
    "riskScore": "RiskScore", "exposureLevel": "ExposureLevel", "deviceValue": "DeviceValue",
    "isAadJoined": "IsAADJoined", "aadDeviceId": "AADDeviceID", "machineTags": "MachineTags",
    "ipAddresses": ("IPAddresses", MACHINE_IP_ADDRESS), "agentVersion": "AgentVersion",
}, path="Machine", headers=("ID", "ComputerDNSName", "OSPlatform", "LastIPAddress", "LastExternalIPAddress",
                            "HealthStatus", "RiskScore", "ExposureLevel", "LastSeen", "MachineTags"),
    derived=network_interfaces)
USER = EntitySpec({  # a machine's logon users and an alert's user
    "id": "ID", "accountName": "AccountName", "accountDomain": "AccountDomain", "accountSid": "AccountSID",
    "firstSeen": "FirstSeen", "lastSeen": "LastSeen", "mostPrevalentMachineId": "MostPrevalentMachineID",
    "leastPrevalentMachineId": "LeastPrevalentMachineID", "logonTypes": "LogonTypes",
    "logOnMachinesCount": "LogonCount", "isDomainAdmin": "DomainAdmin", "isOnlyNetworkUser": "NetworkUser",
})
MACHINE_USER = USER.extend(path="MachineUser", key=("ID", "MachineID"), headers=(
    "ID", "AccountName", "AccountDomain", "MachineID", "FirstSeen", "LastSeen", "LogonTypes", "DomainAdmin",
    "NetworkUser"))


class MachinesApi:
    """Defender API calls of the machines area (mixed into Client)."""

    def list_machines(self, *, odata_filter: str | None = None, limit: int | None = None,
                      offset: int = 0) -> Iterator[dict]:
        params = {"$filter": odata_filter} if odata_filter else {}
        return self.paginate("machines", params, limit=limit, offset=offset)

    def get_machine(self, machine_id: str) -> dict:
        return self.request("GET", f"machines/{segment(machine_id, 'machine_id')}")

    def find_machines_by_ip(self, ip: str, timestamp: datetime) -> list[dict]:
        return self.get_values(f"machines/findbyip(ip='{ip}',timestamp={format_datetime(timestamp)})")

    def list_machine_logon_users(self, machine_id: str) -> list[dict]:
        return self.get_values(f"machines/{segment(machine_id, 'machine_id')}/logonusers")

    def tag_machine(self, machine_id: str, tag: str, action: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/tags", json_body={"Value": tag, "Action": action})

    def list_file_machines(self, sha1: str) -> list[dict]:
        return self.get_values(f"files/{segment(sha1, 'file_hash')}/machines")

    def list_domain_machines(self, domain: str) -> list[dict]:
        return self.get_values(f"domains/{segment(domain, 'domain')}/machines")

    def list_user_machines(self, username: str) -> list[dict]:
        return self.get_values(f"users/{segment(username, 'username')}/machines")


def machine_ids_arg(args: dict, name: str = "machine_id") -> list[str]:
    """The machine ids of a multi-machine command, as given: each is validated on its own when used, so one bad
    id fails only itself (playbooks pass lists and continue on error)."""
    ids = list(dict.fromkeys(value.lower() for value in arg_to_list(args.get(name))))
    if not ids:
        raise ArgumentError(f"{name} is required: one or more machine IDs, comma-separated.")
    return ids


# Endpoint.Status as the original integration derives it from healthStatus; other values leave Status out.
ENDPOINT_STATUS_BY_HEALTH = {"Active": "Online", "Inactive": "Offline", "ImpairedCommunication": "Online"}


def endpoint_status(health_status: object) -> str | None:
    health = str(health_status or "")
    return "Online" if health.startswith("NoSensorData") else ENDPOINT_STATUS_BY_HEALTH.get(health)


def endpoint_os_version(machine: dict) -> str | None:
    """"<osVersion or version> <osProcessor> bit", the original's format (e.g. "22H2 x64 bit")."""
    version = machine.get("osVersion") or machine.get("version")
    processor = machine.get("osProcessor")
    if not version:
        return None
    return f"{version} {processor} bit" if processor else str(version)


def endpoint_context(machine: dict, isolated: bool | None = None) -> dict:
    """The standard Endpoint context; `isolated` comes from the machine's action history (see isolation_states)."""
    last_ip = machine.get("lastIpAddress")
    mac = next((a.get("macAddress") for a in machine.get("ipAddresses") or []
                if last_ip and a.get("ipAddress") == last_ip and a.get("macAddress")), None)
    endpoint = {"ID": machine.get("id"), "Hostname": machine.get("computerDnsName"), "IPAddress": last_ip,
                "OS": machine.get("osPlatform"), "OSVersion": endpoint_os_version(machine),
                "Status": endpoint_status(machine.get("healthStatus")), "MACAddress": mac, "IsIsolated": isolated,
                "Vendor": VENDOR}
    return {key: value for key, value in endpoint.items() if value is not None}


ISOLATION_LOOKUP_BATCH = 50  # machines per machineactions request, to keep the filter short


def isolation_states(client: "Client", machine_ids: list[str]) -> dict[str, bool]:
    """Whether each machine is isolated. The machine record does not say, so this reads the newest succeeded
    Isolate or Unisolate action of each machine: one request per 50 machines. Empty when it cannot be read."""
    states = dict.fromkeys((machine_id.lower() for machine_id in machine_ids), False)
    try:
        for start in range(0, len(machine_ids), ISOLATION_LOOKUP_BATCH):
            odata = (ODataFilter(MACHINE_ACTION_FILTER_FIELDS)
                     .one_of("machineId", machine_ids[start:start + ISOLATION_LOOKUP_BATCH])
                     .one_of("type", ("Isolate", "Unisolate")).eq("status", "Succeeded"))
            for action in sorted(client.list_machine_actions(odata_filter=odata.build()), key=_created):
                states[str(action.get("machineId")).lower()] = action.get("type") == "Isolate"
    except ApiError as exc:
        log_debug(f"Isolation state not available: {exc}")
        return {}
    return states


def machines_result(title: str, machines: Iterable[dict], *, isolation: dict[str, bool] | None = None,
                    failed: Failures | None = None, label: str = "Machine ID") -> CommandResult:
    """Machines in context and a table; with `isolation` (machine id -> isolated) also the Endpoint context."""
    if isolation is None:
        return entity_result(MACHINE, machines, title, failed=failed, failure_label=label)
    machines = list(machines)
    result = entity_result(MACHINE, machines, title, failed=failed, failure_label=label)
    if machines:
        result.outputs[ENDPOINT_KEY] = [endpoint_context(machine, isolation.get(str(machine.get("id")).lower()))
                                        for machine in machines]
    return result


@command("microsoft-atp-get-machines", MACHINE_READ)
def get_machines_command(client: "Client", args: dict) -> CommandResult:
    odata = ODataFilter(MACHINE_FILTER_FIELDS)
    odata.startswith_any("computerDnsName", arg_to_list(args.get("hostname")))
    odata.one_of("lastIpAddress", [validate_ip(ip) for ip in arg_to_list(args.get("ip"))])
    odata.one_of("riskScore", [arg_choice(v, "risk_score", RISK_SCORES) for v in arg_to_list(args.get("risk_score"))])
    odata.eq("healthStatus", arg_choice(args.get("health_status"), "health_status", HEALTH_STATUSES))
    odata.eq("osPlatform", str(args.get("os_platform") or "").strip())
    paging = paging_args(args)
    machines = client.list_machines(odata_filter=odata.build(), limit=paging.limit, offset=paging.offset)
    return machines_result("Machines", machines)


def endpoint_filter(ids: list[str], ips: list[str], hostnames: list[str]) -> str | None:
    """Machines matching any of the values; a hostname matches the name itself or as the start of an FQDN."""
    def fields() -> ODataFilter:
        return ODataFilter(MACHINE_FILTER_FIELDS)

    return fields().any_of(
        fields().one_of("id", ids), fields().one_of("lastIpAddress", ips),
        fields().one_of("computerDnsName", hostnames),
        fields().startswith_any("computerDnsName", [f"{h}." for h in hostnames])).build()


@command("endpoint", MACHINE_READ)
def endpoint_command(client: "Client", args: dict) -> CommandResult:
    ids = [validate_machine_id(value, "id") for value in arg_to_list(args.get("id"))]
    ips = [validate_ip(value) for value in arg_to_list(args.get("ip"))]
    hostnames = arg_to_list(args.get("hostname"))
    if not (ids or ips or hostnames):
        raise ArgumentError("endpoint needs at least one of id, ip or hostname.")
    machines = list(client.list_machines(odata_filter=endpoint_filter(ids, ips, hostnames)))
    return machines_result("Endpoints", machines, isolation=isolation_states(client, [m["id"] for m in machines]))


@command("microsoft-atp-get-machine-by-ip", MACHINE_READ)
def get_machine_by_ip_command(client: "Client", args: dict) -> CommandResult:
    ip = validate_ip(arg_required(args, "ip"))
    now = client.clock.utcnow()
    timestamp = arg_to_datetime(arg_required(args, "timestamp"), "timestamp", now=now)
    if timestamp < now - FIND_BY_IP_MAX_AGE or timestamp > now + CLOCK_SKEW:
        raise ArgumentError(f"timestamp must be within the last 30 days, as Microsoft only searches that far back "
                            f"(got '{args.get('timestamp')}').")
    paging = paging_args(args)
    machines = client.find_machines_by_ip(ip, timestamp)
    if paging.limit is not None:
        machines = machines[paging.offset:paging.offset + paging.limit]
    return machines_result(f"Machines that used {ip} around {format_datetime(timestamp)}", machines,
                           isolation=isolation_states(client, [m["id"] for m in machines]))


@command("microsoft-atp-get-machine-details", MACHINE_READ)
def get_machine_details_command(client: "Client", args: dict) -> CommandResult:
    found, failed = call_for_each(machine_ids_arg(args), lambda machine_id: client.get_machine(
        validate_machine_id(machine_id)), "Getting machine details")
    return machines_result("Machine details", [machine for _, machine in found], failed=failed)


@command("microsoft-atp-get-machine-users", ("User.Read.All",))
def get_machine_users_command(client: "Client", args: dict) -> CommandResult:
    found, failed = call_for_each(machine_ids_arg(args), lambda machine_id: client.list_machine_logon_users(
        validate_machine_id(machine_id)), "Listing logon users")
    users = [{**user, "machineId": machine_id} for machine_id, logons in found for user in logons]
    return entity_result(MACHINE_USER, users, "Users who logged on to the machine",
                         extra=lambda user: {"MachineID": user["machineId"]}, failed=failed,
                         failure_label="Machine ID")


@command("microsoft-atp-add-remove-machine-tag", ("Machine.ReadWrite.All",))
def add_remove_machine_tag_command(client: "Client", args: dict) -> CommandResult:
    machine_ids = machine_ids_arg(args)
    action = required_choice(args, "action", TAG_ACTIONS)
    tag = arg_required(args, "tag")
    found, failed = call_for_each(machine_ids, lambda machine_id: client.tag_machine(
        validate_machine_id(machine_id), tag, action),
                                  f"{action} tag")
    verb = "added to" if action == "Add" else "removed from"
    return machines_result(f"Tag '{tag}' {verb} machines", [machine for _, machine in found], failed=failed)


@command("microsoft-atp-get-file-related-machines", MACHINE_READ)
def get_file_related_machines_command(client: "Client", args: dict) -> CommandResult:
    hashes = list(dict.fromkeys(validate_sha1(value) for value in arg_to_list(args.get("file_hash"))))
    if not hashes:
        raise ArgumentError("file_hash is required: one or more SHA-1 hashes, comma-separated.")
    found, failed = call_for_each(hashes, client.list_file_machines, "Finding machines for the file")
    file_machines = [{"File": sha1, "Machines": [to_context(m, MACHINE) for m in machines]} for sha1, machines in found]
    machines = {m["ID"]: m for entry in file_machines for m in entry["Machines"] if m.get("ID")}
    rows = [{"File": entry["File"], **machine} for entry in file_machines for machine in entry["Machines"]]
    readable = markdown_table("Machines that have seen the file", rows, ["File", *MACHINE.headers[:6]])
    outputs: dict[str, Any] = {context_key(f"{CONTEXT_PREFIX}.FileMachine", "File"): file_machines}
    if machines:
        outputs[MACHINE.context_key()] = list(machines.values())
    return CommandResult(readable + failures_readable(failed, "File hash"), outputs,
                         raw={sha1: machines for sha1, machines in found})


@command("microsoft-atp-get-domain-machines", MACHINE_READ)
def get_domain_machines_command(client: "Client", args: dict) -> CommandResult:
    domain = validate_domain(arg_required(args, "domain"))
    return entity_result(MACHINE, client.list_domain_machines(domain), f"Machines that communicated with {domain}",
                         path="DomainMachine", group=("Domain", domain, "Machines"))


@command("microsoft-atp-get-user-machines", MACHINE_READ)
def get_user_machines_command(client: "Client", args: dict) -> CommandResult:
    username = arg_required(args, "username")
    machines = client.list_user_machines(validate_account_name(username))
    return entity_result(MACHINE, machines, f"Machines {username} logged on to", path="UserMachine",
                         group=("Username", username, "Machines"))


# ============================================================================================
# 6.3 Machine actions
# ============================================================================================


ACTION_STATUSES = ("Pending", "InProgress", "Succeeded", "Failed", "TimeOut", "Cancelled")
FINAL_ACTION_STATUSES = frozenset({"Succeeded", "Failed", "TimeOut", "Cancelled"})
ACTION_TYPES = ("RunAntiVirusScan", "Offboard", "LiveResponse", "CollectInvestigationPackage", "Isolate", "Unisolate",
                "StopAndQuarantineFile", "RestrictCodeExecution", "UnrestrictCodeExecution")
ISOLATION_TYPES = ("Full", "Selective", "UnManagedDevice")
SCAN_TYPES = ("Quick", "Full")
DEFAULT_POLL_INTERVAL = 10  # seconds
DEFAULT_POLL_TIMEOUT = 600
DEFAULT_RESTRICT_COMMENT = "App execution restricted from Cortex XSOAR."
ACTION_ID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


MACHINE_ACTION_FILTER_FIELDS = ("id", "status", "machineId", "type", "requestor", "creationDateTimeUtc")


OUTCOME_HEADERS = ["Machine", "Action ID", "Type", "Status", "Pre-existing", "Details"]


# An action command is listed with the permission that creates its action; polling also needs one of MACHINE_READ.
ACTION_ROLES = ("Machine.Isolate", "Machine.RestrictExecution", "Machine.Scan", "Machine.CollectForensics",
                "Machine.StopAndQuarantine", "Machine.Offboard", "Machine.LiveResponse")


RELATED_FILE_INFO = EntitySpec({"fileIdentifier": "FileIdentifier", "fileIdentifierType": "FileIdentifierType"})
MACHINE_ACTION = EntitySpec({
    "id": "ID", "type": "Type", "scope": "Scope", "requestor": "Requestor", "requestorComment": "RequestorComment",
    "status": "Status", "machineId": "MachineID", "computerDnsName": "ComputerDNSName",
    "creationDateTimeUtc": "CreationDateTimeUtc", "lastUpdateTimeUtc": "LastUpdateTimeUtc",
    "lastUpdateDateTimeUtc": "LastUpdateTimeUtc", "cancellationRequestor": "CancellationRequestor",
    "cancellationComment": "CancellationComment", "cancellationDateTimeUtc": "CancellationDateTimeUtc",
    "relatedFileInfo": ("RelatedFileInfo", RELATED_FILE_INFO),
}, path="MachineAction", headers=("ID", "Type", "Status", "MachineID", "ComputerDNSName", "Requestor",
                                  "RequestorComment", "CreationDateTimeUtc", "LastUpdateTimeUtc"))
# The older integration wrote offboarding results under their own path, with two keys in camelCase.
OFFBOARD_MACHINE = MACHINE_ACTION.extend(path="OffboardMachine", fields={
    **MACHINE_ACTION.fields, "cancellationDateTimeUtc": "cancellationDateTimeUtc",
    "troubleshootInfo": "troubleshootInfo"})


class MachineActionsApi:
    """Defender API calls of the machine-actions area (mixed into Client)."""

    def isolate_machine(self, machine_id: str, comment: str, isolation_type: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/isolate",
                            json_body={"Comment": comment, "IsolationType": isolation_type})

    def unisolate_machine(self, machine_id: str, comment: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/unisolate", json_body={"Comment": comment})

    def run_antivirus_scan(self, machine_id: str, comment: str, scan_type: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/runAntiVirusScan",
                            json_body={"Comment": comment, "ScanType": scan_type})

    def restrict_code_execution(self, machine_id: str, comment: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/restrictCodeExecution", json_body={"Comment": comment})

    def unrestrict_code_execution(self, machine_id: str, comment: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/unrestrictCodeExecution", json_body={"Comment": comment})

    def stop_and_quarantine_file(self, machine_id: str, comment: str, sha1: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/StopAndQuarantineFile",
                            json_body={"Comment": comment, "Sha1": sha1})

    def collect_investigation_package(self, machine_id: str, comment: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/collectInvestigationPackage",
                            json_body={"Comment": comment})

    def offboard_machine(self, machine_id: str, comment: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/offboard", json_body={"Comment": comment})

    def list_machine_actions(self, *, odata_filter: str | None = None, limit: int | None = None,
                             offset: int = 0) -> list[dict]:
        params = {"$filter": odata_filter} if odata_filter else {}
        return list(self.paginate("machineactions", params, limit=limit, offset=offset))

    def cancel_machine_action(self, action_id: str, comment: str) -> dict:
        return self.request("POST", f"machineactions/{segment(action_id, 'action_id')}/cancel", json_body={"Comment": comment})

    def get_investigation_package_uri(self, action_id: str) -> dict:
        return self.request("GET", f"machineactions/{segment(action_id, 'action_id')}/getPackageUri")


def validate_action_id(value: str, name: str = "action_id") -> str:
    if not ACTION_ID.match(value.strip()):
        raise ArgumentError(f"{name} must be a machine action ID, a GUID such as 7a3e8c1d-5b2f-4e6a-9c0d-1f2e3a4b5c6d "
                            f"(got '{value}'). Find IDs with !microsoft-atp-list-machine-actions-details.")
    return value.strip()


def extra_filter_arg(args: dict) -> str | None:
    """The raw OData clause in `filters`, passed to Microsoft as is."""
    value = args.get("filters")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip():
        raise ArgumentError(f"filters must be an OData clause as text, e.g. creationDateTimeUtc gt "
                            f"2024-05-01T00:00:00Z (got '{value}').")
    return value.strip()


@command("microsoft-atp-list-machine-actions-details", MACHINE_READ)
def list_machine_actions_details_command(client: "Client", args: dict) -> CommandResult:
    odata = ODataFilter(MACHINE_ACTION_FILTER_FIELDS)
    odata.one_of("id", [validate_action_id(value, "id") for value in arg_to_list(args.get("id"))])
    odata.eq("status", arg_choice(args.get("status"), "status", ACTION_STATUSES))
    odata.one_of("machineId", [validate_machine_id(value) for value in arg_to_list(args.get("machine_id"))])
    odata.eq("type", arg_choice(args.get("type"), "type", ACTION_TYPES))
    odata.eq("requestor", str(args.get("requestor") or "").strip())
    odata.verbatim(extra_filter_arg(args))
    paging = paging_args(args)
    actions = client.list_machine_actions(odata_filter=odata.build(), limit=paging.limit, offset=paging.offset)
    return entity_result(MACHINE_ACTION, actions, "Machine actions")


@command("microsoft-atp-cancel-machine-action", ACTION_ROLES)
def cancel_machine_action_command(client: "Client", args: dict) -> CommandResult:
    action_id = validate_action_id(arg_required(args, "action_id"))
    comment = arg_required(args, "comment")
    action = client.cancel_machine_action(action_id, comment)
    return entity_result(MACHINE_ACTION, [action], f"Cancellation requested for machine action {action_id}")


def package_link(client: "Client", action_id: str) -> str:
    # Microsoft's documented example wraps the link in extra quotes.
    link = str(client.get_investigation_package_uri(action_id).get("value") or "").strip().strip('"')
    if not link:
        raise ApiError(f"Microsoft returned no download link for the investigation package of action {action_id}.")
    return link


@command("microsoft-atp-get-investigation-package-sas-uri", MACHINE_READ)
def get_investigation_package_sas_uri_command(client: "Client", args: dict) -> CommandResult:
    action_id = validate_action_id(arg_required(args, "action_id"))
    link = package_link(client, action_id)
    readable = (f"### Investigation package of action {action_id}\nDownload link (valid for a short time only): "
                f"{link}")
    return CommandResult(readable, {context_key(f"{CONTEXT_PREFIX}.InvestigationURI", "Link"): {
        "Link": link, "ActionID": action_id}}, raw={"value": link})


class ActionCommand(NamedTuple):
    """A response-action command: what it asks Microsoft for and how its results are written."""

    name: str  # the command, rerun by the platform while actions are pending
    action_type: str  # Microsoft's type, to find an already pending action of the same kind
    ids_arg: str = "action_ids"  # carries the action ids between polling rounds
    polling_default: bool = True
    spec: EntitySpec = MACHINE_ACTION  # how the actions are written to context


class ActionTarget(NamedTuple):
    machine_id: str
    file_sha1: str = ""
    comment: str = ""  # what the request said; identifies the action if the answer to it was lost


class ActionOutcome:
    """One requested action: Microsoft's record of it, or why it could not be requested or found."""

    __slots__ = ("machine_id", "action", "preexisting", "error", "note")

    def __init__(self, machine_id: str, action: dict | None = None, preexisting: bool = False, *, error: str = "",
                 note: str = "") -> None:
        self.machine_id = machine_id
        self.action = action or {}  # empty when the action could not be requested or found
        self.preexisting = preexisting
        self.error = error
        self.note = note

    @property
    def final(self) -> bool:
        return bool(self.error) or self.action.get("status") in FINAL_ACTION_STATUSES

    @property
    def label(self) -> str:
        machine = self.action.get("computerDnsName") or self.machine_id
        return f"{self.action.get('type')} on {machine} ({self.action.get('status')})"


def is_already_pending(exc: ApiError) -> bool:
    text = str(exc).lower()
    return exc.status == 400 and (exc.code == "ActiveRequestAlreadyExists" or "already in progress" in text
                                  or "pending" in text)


def _created(action: dict) -> datetime:
    try:
        return parse_iso_datetime(str(action.get("creationDateTimeUtc")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def find_action(client: "Client", command: ActionCommand, target: ActionTarget, *,
                statuses: Iterable[str] = (), created_since: datetime | None = None) -> dict | None:
    """The newest action of this type on the machine (and for this file, when there is one), optionally only in
    the given statuses or created since a moment."""
    odata = (ODataFilter(MACHINE_ACTION_FILTER_FIELDS).eq("machineId", target.machine_id)
             .eq("type", command.action_type).one_of("status", statuses)
             .compare("creationDateTimeUtc", "ge", created_since))
    candidates = [action for action in client.list_machine_actions(odata_filter=odata.build())
                  if same_file(action, target.file_sha1)
                  and (created_since is None or not target.comment or action.get("requestorComment") == target.comment)]
    return max(candidates, key=_created, default=None)


def find_pending_action(client: "Client", command: ActionCommand, target: ActionTarget) -> dict | None:
    return find_action(client, command, target, statuses=("Pending", "InProgress"))


def created_despite(failure: ApiError, client: "Client", command: ActionCommand, target: ActionTarget,
                    since: datetime) -> ActionOutcome:
    """After a write whose outcome is unknown (timeout, dropped connection, 5xx, unreadable answer): the action it
    may have created. Reporting a created action as failed would make an analyst request it again."""
    try:
        created = find_action(client, command, target, created_since=since - CLOCK_SKEW)
    except ApiError as exc:
        return ActionOutcome(target.machine_id, error=f"{failure} Whether Microsoft created the action could not be "
                             f"checked ({exc}); look with !microsoft-atp-list-machine-actions-details "
                             f"machine_id={target.machine_id} before requesting it again.")
    if created:
        return ActionOutcome(target.machine_id, created, note=f"The request ended with '{failure}', but Microsoft "
                             "has the action: it was created once.")
    return ActionOutcome(target.machine_id, error=f"{failure} No {command.action_type} action exists for the machine "
                         "since the request, so it was not created; request it again.")


def same_file(action: dict, sha1: str) -> bool:
    file_id = str((action.get("relatedFileInfo") or {}).get("fileIdentifier") or "").lower()
    return not sha1 or not file_id or file_id == sha1


def request_action(client: "Client", command: ActionCommand, target: ActionTarget,
                   create: Callable[[ActionTarget], dict]) -> ActionOutcome:
    """Creates one action. If Microsoft says one is already pending, returns that one: a second
    request would be refused, and retrying later would queue a duplicate."""
    try:
        validate_machine_id(target.machine_id)
        requested = client.clock.utcnow()
        try:
            return ActionOutcome(target.machine_id, create(target))
        except ApiError as exc:
            if exc.ambiguous:
                return created_despite(exc, client, command, target, requested)
            pending = find_pending_action(client, command, target) if is_already_pending(exc) else None
            if pending is None:
                raise
            return ActionOutcome(target.machine_id, pending, preexisting=True)
    except IntegrationError as exc:  # an invalid machine id or an API error: this machine's outcome
        return ActionOutcome(target.machine_id, error=str(exc))


def current_outcomes(client: "Client", action_ids: list[str], preexisting: set[str]) -> list[ActionOutcome]:
    """The state of every action in one request."""
    odata = ODataFilter(MACHINE_ACTION_FILTER_FIELDS).one_of("id", action_ids)
    by_id = {str(action.get("id")).lower(): action for action in client.list_machine_actions(odata_filter=odata.build())}
    outcomes = []
    for action_id in action_ids:
        action = by_id.get(action_id.lower())
        outcomes.append(ActionOutcome(str(action.get("machineId") or ""), action, action_id in preexisting) if action
                        else ActionOutcome("", error=f"Machine action {action_id} was not found."))
    return outcomes


def outcome_row(outcome: ActionOutcome) -> dict:
    action = outcome.action
    file_id = (action.get("relatedFileInfo") or {}).get("fileIdentifier")
    details = [outcome.error, outcome.note, f"File {file_id}" if file_id else "",
               "An action of this type was already pending on the machine; it was returned instead of requesting a "
               "new one." if outcome.preexisting else ""]
    return {"Machine": action.get("computerDnsName") or outcome.machine_id, "Action ID": action.get("id"),
            "Type": action.get("type"), "Status": action.get("status") or ("Request failed" if outcome.error else ""),
            "Pre-existing": "yes" if outcome.preexisting else "no", "Details": " ".join(d for d in details if d)}


def outcomes_result(command: ActionCommand, outcomes: list[ActionOutcome], readable: str,
                    scheduled: ScheduledCommand | None = None) -> CommandResult:
    """Every target's outcome in context: Microsoft's action records, and for a machine whose request failed a
    record with Status Failed and the Error, so a playbook can branch on each machine."""
    preexisting = {str(o.action.get("id")) for o in outcomes if o.preexisting}
    result = entity_result(command.spec, [o.action for o in outcomes if o.action], "",
                           extra=lambda action: {"PreExisting": str(action.get("id")) in preexisting})
    failures = [{"MachineID": o.machine_id, "Type": command.action_type, "Status": "Failed", "Error": o.error,
                 "PreExisting": False} for o in outcomes if o.error]
    if failures:
        result.outputs.setdefault(command.spec.context_key(), []).extend(failures)
    result.readable, result.scheduled = readable, scheduled
    return result


def next_round_args(args: dict, command: ActionCommand, outcomes: list[ActionOutcome], started: float) -> dict:
    ids = [str(o.action["id"]) for o in outcomes if o.action.get("id")]
    preexisting = [str(o.action["id"]) for o in outcomes if o.preexisting and o.action.get("id")]
    failed = [[o.machine_id, o.error] for o in outcomes if o.error and not o.action]
    next_args = {**args, command.ids_arg: ",".join(ids), "polling_started": str(int(started))}
    next_args.pop("preexisting_action_ids", None)
    if preexisting:
        next_args["preexisting_action_ids"] = ",".join(preexisting)
    if failed:  # machines whose request failed stay in every later round's report
        next_args["failed_requests"] = json.dumps(failed)
    return next_args


def failed_requests_arg(args: dict) -> list[ActionOutcome]:
    """The machines whose request failed in the first round (carried between polling rounds)."""
    try:
        return [ActionOutcome(str(machine), error=str(error)) for machine, error in json.loads(
            args.get("failed_requests") or "[]")]
    except (TypeError, ValueError):
        raise ArgumentError("failed_requests is set by the integration between polling rounds; leave it empty "
                            f"(got '{args.get('failed_requests')}').") from None


def partial_failure_warning(command: ActionCommand, outcomes: list[ActionOutcome]) -> dict | None:
    """A warning entry when some targets failed and others did not: the task still succeeds (playbooks keep their
    semantics) and the platform and the CLI can tell that not everything worked."""
    failed = [outcome for outcome in outcomes if outcome.error]
    if not failed or len(failed) == len(outcomes):
        return None
    lines = "\n".join(f"- {outcome.machine_id or 'unknown machine'}: {outcome.error}" for outcome in failed)
    return {"Type": 11, "ContentsFormat": "text",
            "Contents": f"{command.action_type} failed for {len(failed)} of {len(outcomes)} machines:\n{lines}"}


def run_machine_action(client: "Client", args: dict, command: ActionCommand, targets: list[ActionTarget],
                       create: Callable[[ActionTarget], dict],
                       on_done: Callable[["Client", list[ActionOutcome], CommandResult], Any] | None = None) -> Any:
    """The polling state machine shared by every action command. The first run creates the actions (one per
    target); later runs, scheduled every interval while any action is not final, check all of them with one
    request. The last run reports each action's outcome, or what is still pending when time runs out."""
    polling = arg_to_bool(args.get("polling"), "polling", command.polling_default)
    interval = arg_to_int(args.get("interval_in_seconds"), "interval_in_seconds", default=DEFAULT_POLL_INTERVAL,
                          minimum=1)
    timeout = arg_to_int(args.get("timeout_in_seconds"), "timeout_in_seconds", default=DEFAULT_POLL_TIMEOUT,
                         minimum=interval)
    action_ids = [validate_action_id(value, command.ids_arg) for value in arg_to_list(args.get(command.ids_arg))]
    now = client.clock.now()
    if action_ids:
        started = float(arg_to_int(args.get("polling_started"), "polling_started", default=int(now)))
        outcomes = current_outcomes(client, action_ids, set(arg_to_list(args.get("preexisting_action_ids"))))
        outcomes += failed_requests_arg(args)
        title = "Machine action results"
    else:
        started = now
        outcomes = [request_action(client, command, target, create) for target in targets]
        title = "Machine actions requested"
    if all(outcome.error for outcome in outcomes):
        raise IntegrationError(f"{command.action_type} failed for every machine:\n" + "\n".join(
            f"- {outcome.machine_id or 'unknown machine'}: {outcome.error}" for outcome in outcomes))
    pending = [outcome for outcome in outcomes if not outcome.final]
    table = markdown_table(title, [outcome_row(outcome) for outcome in outcomes], OUTCOME_HEADERS)
    waiting = ", ".join(outcome.label for outcome in pending)
    elapsed = now - started
    if polling and pending and elapsed + interval <= timeout:
        status = f"Waiting for {len(pending)} of {len(outcomes)} actions: {waiting}. Checking again in {interval} s."
        scheduled = ScheduledCommand(command.name, interval, next_round_args(args, command, outcomes, started), timeout)
        return outcomes_result(command, outcomes, status if action_ids else f"{table}\n\n{status}", scheduled)
    if pending:
        ids = ",".join(str(outcome.action.get("id")) for outcome in pending)
        reason = (f"Stopped waiting after {elapsed:.0f} s (timeout_in_seconds={timeout})" if polling
                  else "Not waiting for completion (polling=false)")
        table += (f"\n\n{reason}; still pending: {waiting}. Check later with "
                  f"!microsoft-atp-list-machine-actions-details id={ids}")
    result = outcomes_result(command, outcomes, table)
    entries = on_done(client, outcomes, result) if on_done and not pending else [result]
    warning = partial_failure_warning(command, outcomes)
    return [*entries, warning] if warning else (entries[0] if len(entries) == 1 else entries)


def machine_targets(args: dict) -> list[ActionTarget]:
    comment = str(args.get("comment") or "").strip()
    return [ActionTarget(machine_id, comment=comment) for machine_id in machine_ids_arg(args)]


ISOLATE = ActionCommand("microsoft-atp-isolate-machine", "Isolate")
UNISOLATE = ActionCommand("microsoft-atp-unisolate-machine", "Unisolate")
SCAN = ActionCommand("microsoft-atp-run-antivirus-scan", "RunAntiVirusScan")
RESTRICT = ActionCommand("microsoft-atp-restrict-app-execution", "RestrictCodeExecution")
UNRESTRICT = ActionCommand("microsoft-atp-remove-app-restriction", "UnrestrictCodeExecution")
QUARANTINE = ActionCommand("microsoft-atp-stop-and-quarantine-file", "StopAndQuarantineFile", polling_default=False)
COLLECT = ActionCommand("microsoft-atp-collect-investigation-package", "CollectInvestigationPackage")
DOWNLOAD = ActionCommand("microsoft-atp-request-and-download-investigation-package", "CollectInvestigationPackage",
                         ids_arg="machine_action_id")


OFFBOARD = ActionCommand("microsoft-atp-offboard-machine", "Offboard", spec=OFFBOARD_MACHINE)


@command("microsoft-atp-isolate-machine", ("Machine.Isolate",))
def isolate_machine_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    isolation_type = required_choice(args, "isolation_type", ISOLATION_TYPES)
    return run_machine_action(client, args, ISOLATE, machine_targets(args),
                              lambda target: client.isolate_machine(target.machine_id, comment, isolation_type))


@command("microsoft-atp-unisolate-machine", ("Machine.Isolate",))
def unisolate_machine_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    return run_machine_action(client, args, UNISOLATE, machine_targets(args),
                              lambda target: client.unisolate_machine(target.machine_id, comment))


@command("microsoft-atp-run-antivirus-scan", ("Machine.Scan",))
def run_antivirus_scan_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    scan_type = required_choice(args, "scan_type", SCAN_TYPES)
    return run_machine_action(client, args, SCAN, machine_targets(args),
                              lambda target: client.run_antivirus_scan(target.machine_id, comment, scan_type))


@command("microsoft-atp-restrict-app-execution", ("Machine.RestrictExecution",))
def restrict_app_execution_command(client: "Client", args: dict) -> Any:
    comment = str(args.get("comment") or "").strip() or DEFAULT_RESTRICT_COMMENT
    return run_machine_action(client, args, RESTRICT, machine_targets(args),
                              lambda target: client.restrict_code_execution(target.machine_id, comment))


@command("microsoft-atp-remove-app-restriction", ("Machine.RestrictExecution",))
def remove_app_restriction_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    return run_machine_action(client, args, UNRESTRICT, machine_targets(args),
                              lambda target: client.unrestrict_code_execution(target.machine_id, comment))


@command("microsoft-atp-stop-and-quarantine-file", ("Machine.StopAndQuarantine",))
def stop_and_quarantine_file_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    hashes = list(dict.fromkeys(validate_sha1(value) for value in arg_to_list(args.get("file_hash"))))
    if not hashes:
        raise ArgumentError("file_hash is required: one or more SHA-1 hashes, comma-separated.")
    targets = [ActionTarget(machine_id, sha1, comment) for machine_id in machine_ids_arg(args) for sha1 in hashes]
    return run_machine_action(client, args, QUARANTINE, targets, lambda target: client.stop_and_quarantine_file(
        target.machine_id, comment, target.file_sha1))


@command("microsoft-atp-collect-investigation-package", ("Machine.CollectForensics",))
def collect_investigation_package_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    return run_machine_action(client, args, COLLECT, machine_targets(args),
                              lambda target: client.collect_investigation_package(target.machine_id, comment))


def download_packages(client: "Client", outcomes: list[ActionOutcome], result: CommandResult) -> list:
    """The last step of request-and-download: a file entry per successful collection."""
    collected = [outcome for outcome in outcomes if outcome.action.get("status") == "Succeeded"]
    if not collected:
        raise IntegrationError("No investigation package to download: " + "; ".join(
            outcome.error or outcome.label for outcome in outcomes))
    files = [file_entry(f"{outcome.action.get('machineId') or outcome.machine_id}_investigation_package.zip",
                        client.download(package_link(client, outcome.action["id"]))) for outcome in collected]
    return [result, *files]


@command("microsoft-atp-request-and-download-investigation-package", ("Machine.CollectForensics",))
def request_and_download_investigation_package_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    return run_machine_action(client, args, DOWNLOAD, machine_targets(args),
                              lambda target: client.collect_investigation_package(target.machine_id, comment),
                              on_done=download_packages)


@command("microsoft-atp-offboard-machine", ("Machine.Offboard",))
def offboard_machine_command(client: "Client", args: dict) -> Any:
    comment = arg_required(args, "comment")
    return run_machine_action(client, args, OFFBOARD, machine_targets(args),
                              lambda target: client.offboard_machine(target.machine_id, comment))


# ============================================================================================
# 6.4 Alerts
# ============================================================================================


ALERT_FILTER_FIELDS = ("alertCreationTime", "lastUpdateTime", "incidentId", "investigationId", "id", "assignedTo",
                       "detectionSource", "lastEventTime", "status", "severity", "category")
ALERT_SEVERITIES = ("Informational", "Low", "Medium", "High")
ALERT_STATUSES = ("New", "InProgress", "Resolved")
ALERT_CLASSIFICATIONS = ("Unknown", "FalsePositive", "TruePositive", "InformationalExpectedActivity")


# Microsoft's pages disagree on some names: the contract's values and the alternative spellings are all accepted.
ALERT_DETERMINATIONS = ("NotAvailable", "Malware", "SecurityTesting", "UnwantedSoftware", "MultiStagedAttack",
                        "MaliciousUserActivity", "CompromisedAccount", "CompromisedUser", "Phishing",
                        "LineOfBusinessApplication", "ConfirmedActivity", "ConfirmedUserActivity", "NotMalicious",
                        "Clean", "InsufficientData", "Other")
CREATED_ALERT_SEVERITIES = ("Low", "Medium", "High")


# The older integration's categories plus the ones Microsoft documents for CreateAlertByReference.
CREATED_ALERT_CATEGORIES = (
    "None", "General", "SuspiciousActivity", "Malware", "CredentialTheft", "CredentialAccess", "Collection",
    "DefenseEvasion", "Discovery", "Execution", "InitialAccess", "Exploit", "WebExploit", "DocumentExploit",
    "PrivilegeEscalation", "Persistence", "RemoteAccessTool", "CommandAndControl", "SuspiciousNetworkTraffic",
    "Ransomware", "MalwareDownload", "Reconnaissance", "WebFingerprinting", "Weaponization", "Delivery",
    "SocialEngineering", "CredentialStealing", "Installation", "Backdoor", "Trojan", "TrojanDownloader",
    "LateralMovement", "ExplorationEnumeration", "NetworkPropagation", "Exfiltration", "NotApplicable",
    "EnterprisePolicy")


ALERT_COMMENT = EntitySpec({"comment": "Comment", "createdBy": "CreatedBy", "createdTime": "CreatedTime"})
# Evidence and relatedUser pass through in Microsoft's camelCase: existing playbooks read them that way.
ALERT = EntitySpec({
    "id": "ID", "incidentId": "IncidentID", "investigationId": "InvestigationID",
    "investigationState": "InvestigationState", "assignedTo": "AssignedTo", "severity": "Severity",
    "status": "Status", "classification": "Classification", "determination": "Determination",
    "detectionSource": "DetectionSource", "detectorId": "DetectorID", "category": "Category",
    "threatFamilyName": "ThreatFamilyName", "threatName": "ThreatName", "title": "Title",
    "description": "Description", "alertCreationTime": "AlertCreationTime", "firstEventTime": "FirstEventTime",
    "lastEventTime": "LastEventTime", "lastUpdateTime": "LastUpdateTime", "resolvedTime": "ResolvedTime",
    "machineId": "MachineID", "computerDnsName": "ComputerDNSName", "rbacGroupName": "RBACGroupName",
    "aadTenantId": "AADTenantID", "mitreTechniques": "MitreTechniques", "relatedUser": "RelatedUser",
    "comments": ("Comments", ALERT_COMMENT), "evidence": "Evidence",
}, path="Alert", headers=("ID", "Title", "Severity", "Status", "AlertCreationTime", "ComputerDNSName", "MachineID",
                          "Category", "DetectionSource", "AssignedTo", "IncidentID"))
ALERT_FILE = EntitySpec({
    "sha1": "Sha1", "sha256": "Sha256", "md5": "Md5", "globalPrevalence": "GlobalPrevalence",
    "globalFirstObserved": "GlobalFirstObserved", "globalLastObserved": "GlobalLastObserved", "size": "Size",
    "fileType": "FileType", "isPeFile": "IsPeFile", "filePublisher": "FilePublisher",
    "fileProductName": "FileProductName", "signer": "Signer", "issuer": "Issuer", "signerHash": "SignerHash",
    "isValidCertificate": "IsValidCertificate", "determinationType": "DeterminationType",
    "determinationValue": "DeterminationValue",
}, path="AlertFile")
ALERT_IP = EntitySpec({"id": "IpAddress"}, path="AlertIP")
ALERT_DOMAIN = EntitySpec({"host": "Domain"}, path="AlertDomain")


class AlertsApi:
    """Defender API calls of the alerts area (mixed into Client)."""

    def list_alerts(self, *, odata_filter: str | None = None, limit: int | None = None, offset: int = 0,
                    expand_evidence: bool = False, order_by: str | None = None) -> list[dict]:
        params = {"$filter": odata_filter} if odata_filter else {}
        if expand_evidence:
            params["$expand"] = "evidence"
        if order_by:
            params["$orderby"] = order_by
        return list(self.paginate("alerts", params, limit=limit, offset=offset))

    def get_alert(self, alert_id: str, *, expand_evidence: bool = False) -> dict:
        params = {"$expand": "evidence"} if expand_evidence else None
        return self.request("GET", f"alerts/{segment(alert_id, 'alert_id')}", params=params)

    def update_alert(self, alert_id: str, changes: dict) -> dict:
        return self.request("PATCH", f"alerts/{segment(alert_id, 'alert_id')}", json_body=changes)

    def create_alert_by_reference(self, alert: dict) -> dict:
        return self.request("POST", "alerts/CreateAlertByReference", json_body=alert)

    def get_alert_user(self, alert_id: str) -> dict:
        return self.request("GET", f"alerts/{segment(alert_id, 'alert_id')}/user")

    def list_alert_files(self, alert_id: str) -> list[dict]:
        return self.get_values(f"alerts/{segment(alert_id, 'alert_id')}/files")

    def list_alert_ips(self, alert_id: str) -> list[dict]:
        return self.get_values(f"alerts/{segment(alert_id, 'alert_id')}/ips")

    def list_alert_domains(self, alert_id: str) -> list[dict]:
        return self.get_values(f"alerts/{segment(alert_id, 'alert_id')}/domains")

    def list_file_alerts(self, sha1: str) -> list[dict]:
        return self.get_values(f"files/{segment(sha1, 'file_hash')}/alerts")

    def list_ip_alerts(self, ip: str) -> list[dict]:
        return self.get_values(f"ips/{segment(ip, 'ip')}/alerts")

    def list_domain_alerts(self, domain: str) -> list[dict]:
        return self.get_values(f"domains/{segment(domain, 'domain')}/alerts")

    def list_user_alerts(self, username: str) -> list[dict]:
        return self.get_values(f"users/{segment(username, 'username')}/alerts")

    def list_machine_alerts(self, machine_id: str) -> list[dict]:
        return self.get_values(f"machines/{segment(machine_id, 'machine_id')}/alerts")


@command("microsoft-atp-list-alerts", ALERT_READ)
def list_alerts_command(client: "Client", args: dict) -> CommandResult:
    odata_filter = (ODataFilter(ALERT_FILTER_FIELDS)
                    .one_of("severity", arg_choices(args.get("severity"), "severity", ALERT_SEVERITIES))
                    .one_of("status", arg_choices(args.get("status"), "status", ALERT_STATUSES))
                    .eq("category", str(args.get("category") or "").strip())
                    .compare("alertCreationTime", "ge", arg_to_datetime(args.get("creation_time"), "creation_time",
                                                                         now=client.clock.utcnow()))
                    .build())
    paging = paging_args(args)
    alerts = client.list_alerts(odata_filter=odata_filter, limit=paging.limit, offset=paging.offset,
                                expand_evidence=arg_to_bool(args.get("evidence"), "evidence"))
    return entity_result(ALERT, alerts, "Microsoft Defender for Endpoint alerts")


@command("microsoft-atp-get-alert-by-id", ALERT_READ)
def get_alert_by_id_command(client: "Client", args: dict) -> CommandResult:
    alert_ids = arg_to_list(args.get("alert_ids"))
    if not alert_ids:
        raise ArgumentError("alert_ids is required: one alert ID or a comma-separated list of them.")
    evidence = arg_to_bool(args.get("evidence"), "evidence")
    found, failed = call_for_each(alert_ids, lambda alert_id: client.get_alert(
        validate_object_id(alert_id, "alert_ids", "an alert"), expand_evidence=evidence), "Getting alerts")
    return entity_result(ALERT, [alert for _, alert in found], "Microsoft Defender for Endpoint alerts",
                         failed=failed, failure_label="Alert ID")


@command("microsoft-atp-update-alert", ("Alert.ReadWrite.All",))
def update_alert_command(client: "Client", args: dict) -> CommandResult:
    alert_id = validate_object_id(arg_required(args, "alert_id"), "alert_id", "an alert")
    changes = {
        "status": arg_choice(args.get("status"), "status", ALERT_STATUSES),
        "assignedTo": str(args.get("assigned_to") or "").strip(),
        "classification": arg_choice(args.get("classification"), "classification", ALERT_CLASSIFICATIONS),
        "determination": arg_choice(args.get("determination"), "determination", ALERT_DETERMINATIONS),
        "comment": str(args.get("comment") or "").strip(),
    }
    changes = {name: value for name, value in changes.items() if value}
    if not changes:
        raise ArgumentError("Nothing to update: give at least one of status, assigned_to, classification, "
                            "determination or comment.")
    alert = client.update_alert(alert_id, changes)
    return entity_result(ALERT, [alert], f"Alert {alert_id} was updated ({', '.join(changes)})")


@command("microsoft-atp-create-alert", ("Alert.ReadWrite.All",))
def create_alert_command(client: "Client", args: dict) -> CommandResult:
    event_time = arg_required(args, "event_time")
    try:
        parse_iso_datetime(event_time)
    except ValueError:
        raise ArgumentError("event_time must be the ISO 8601 Timestamp of the advanced hunting event, e.g. "
                            f"2024-05-01T10:00:00.1234567Z (got '{event_time}').") from None
    alert = {
        "machineId": validate_machine_id(arg_required(args, "machine_id")),
        "severity": arg_choice(arg_required(args, "severity"), "severity", CREATED_ALERT_SEVERITIES),
        "title": arg_required(args, "title"),
        "description": arg_required(args, "description"),
        "recommendedAction": arg_required(args, "recommended_action"),
        "eventTime": event_time,  # sent as given: Microsoft matches it to the event exactly
        "reportId": arg_required(args, "report_id"),
        "category": arg_choice(args.get("category"), "category", CREATED_ALERT_CATEGORIES, default="None"),
    }
    return entity_result(ALERT, [client.create_alert_by_reference(alert)], "Alert created")


@command("microsoft-atp-get-alert-related-user", ("User.Read.All",))
def get_alert_related_user_command(client: "Client", args: dict) -> CommandResult:
    alert_id = validate_object_id(arg_required(args, "id"), "id", "an alert")
    return entity_result(USER, client.get_alert_user(alert_id), f"User related to alert {alert_id}",
                         path="AlertUser", group=("AlertID", alert_id, "User"))


def alert_related(client: "Client", args: dict, spec: EntitySpec, what: str, items_key: str,
                  fetch: Callable[[str], list[dict]]) -> CommandResult:
    """Files, IPs or domains of one alert; the endpoint does not page, so limit and offset apply here."""
    alert_id = validate_object_id(arg_required(args, "id"), "id", "an alert")
    paging = paging_args(args)
    records = fetch(alert_id)
    if paging.limit is not None:
        records = records[paging.offset:paging.offset + paging.limit]
    return entity_result(spec, records, f"{what} related to alert {alert_id}", group=("AlertID", alert_id, items_key))


@command("microsoft-atp-get-alert-related-files", ("File.Read.All",))
def get_alert_related_files_command(client: "Client", args: dict) -> CommandResult:
    return alert_related(client, args, ALERT_FILE, "Files", "Files", client.list_alert_files)


@command("microsoft-atp-get-alert-related-ips", ("Ip.Read.All",))
def get_alert_related_ips_command(client: "Client", args: dict) -> CommandResult:
    return alert_related(client, args, ALERT_IP, "IPs", "IPs", client.list_alert_ips)


@command("microsoft-atp-get-alert-related-domains", ("URL.Read.All",))
def get_alert_related_domains_command(client: "Client", args: dict) -> CommandResult:
    return alert_related(client, args, ALERT_DOMAIN, "Domains", "Domains", client.list_alert_domains)


@command("microsoft-atp-get-machine-alerts", ALERT_READ)
def get_machine_alerts_command(client: "Client", args: dict) -> CommandResult:
    machine_id = validate_machine_id(arg_required(args, "machine_id"))
    return entity_result(ALERT, client.list_machine_alerts(machine_id), f"Alerts of machine {machine_id}",
                         path="MachineAlerts")


@command("microsoft-atp-get-file-alerts", ALERT_READ)
def get_file_alerts_command(client: "Client", args: dict) -> CommandResult:
    file_hash = arg_required(args, "file_hash")
    if SHA256.match(file_hash) or MD5.match(file_hash):
        raise ArgumentError("file_hash must be a SHA-1 hash: Microsoft looks up the alerts of a file by SHA-1 only "
                            f"(got '{file_hash}'). Find the SHA-1 with !microsoft-atp-get-file-info.")
    sha1 = validate_sha1(file_hash)
    return entity_result(ALERT, client.list_file_alerts(sha1), f"Alerts related to file {sha1}", path="FileAlert",
                         group=("Sha1", sha1, "Alerts"))


@command("microsoft-atp-get-ip-alerts", ALERT_READ)
def get_ip_alerts_command(client: "Client", args: dict) -> CommandResult:
    ip = validate_ip(arg_required(args, "ip"))
    return entity_result(ALERT, client.list_ip_alerts(ip), f"Alerts related to IP {ip}", path="IPAlert",
                         group=("IPAddress", ip, "Alerts"))


@command("microsoft-atp-get-domain-alerts", ALERT_READ)
def get_domain_alerts_command(client: "Client", args: dict) -> CommandResult:
    domain = validate_domain(arg_required(args, "domain"))
    return entity_result(ALERT, client.list_domain_alerts(domain), f"Alerts related to domain {domain}",
                         path="DomainAlert", group=("Domain", domain, "Alerts"))


@command("microsoft-atp-get-user-alerts", ALERT_READ)
def get_user_alerts_command(client: "Client", args: dict) -> CommandResult:
    username = arg_required(args, "username")
    return entity_result(ALERT, client.list_user_alerts(validate_account_name(username)), f"Alerts related to user {username}",
                         path="UserAlert", group=("Username", username, "Alerts"))


# ============================================================================================
# 6.5 Investigations
# ============================================================================================


INVESTIGATION = EntitySpec({
    "id": "ID", "startTime": "StartTime", "endTime": "EndTime", "state": "State", "cancelledBy": "CancelledBy",
    "statusDetails": "StatusDetails", "machineId": "MachineID", "computerDnsName": "ComputerDNSName",
    "triggeringAlertId": "TriggeringAlertID",
}, path="Investigation", headers=("ID", "State", "MachineID", "ComputerDNSName", "StartTime", "EndTime",
                                  "TriggeringAlertID", "StatusDetails", "CancelledBy"))


class InvestigationsApi:
    """Defender API calls of the automated-investigations area (mixed into Client)."""

    def list_investigations(self, *, limit: int | None = None, offset: int = 0) -> list[dict]:
        return list(self.paginate("investigations", limit=limit, offset=offset))

    def get_investigation(self, investigation_id: str) -> dict:
        return self.request("GET", f"investigations/{segment(investigation_id, 'investigation_id')}")

    def start_investigation(self, machine_id: str, comment: str) -> dict:
        return self.request("POST", f"machines/{segment(machine_id, 'machine_id')}/startInvestigation", json_body={"Comment": comment})


@command("microsoft-atp-list-investigations", ALERT_READ)
def list_investigations_command(client: "Client", args: dict) -> CommandResult:
    investigation_id = str(args.get("id") or "").strip()
    if investigation_id:
        investigation_id = validate_object_id(investigation_id, "id", "an investigation")
    paging = paging_args(args)
    if investigation_id:
        investigations = [client.get_investigation(investigation_id)]
    else:
        investigations = client.list_investigations(limit=paging.limit, offset=paging.offset)
    return entity_result(INVESTIGATION, investigations, "Automated investigations")


@command("microsoft-atp-start-investigation", ("Alert.ReadWrite.All",))
def start_investigation_command(client: "Client", args: dict) -> CommandResult:
    # `timeout` is accepted for older playbooks; requests use the integration's own timeouts and retries.
    machine_id = validate_machine_id(arg_required(args, "machine_id"))
    investigation = client.start_investigation(machine_id, arg_required(args, "comment"))
    return entity_result(INVESTIGATION, [investigation], f"Automated investigation started on machine {machine_id}")


# ============================================================================================
# 6.6 Fetch incidents
# ============================================================================================


# Deprecated in favour of the Microsoft Graph Security integration (alerts_v2), still fully supported.
# The cursor is the creation time of the newest alert taken plus the ids taken at or after the window's
# lower bound; every run re-reads a look-back window so alerts that become visible late are not lost.


FETCH_ORDER = "alertCreationTime asc"
INCIDENT_SEVERITY = {"informational": 0.5, "low": 1, "medium": 2, "high": 3}


# The fetch parameter's options -> Microsoft's detectionSource values (these are accepted as well).
DETECTION_SOURCES = {
    "Antivirus": "WindowsDefenderAv",
    "Automated investigation": "AutomatedInvestigation",
    "Custom detection": "CustomDetection",
    "Custom TI": "CustomerTI",
    "EDR": "WindowsDefenderAtp",
    "Microsoft 365 Defender": "MTP",
    "Microsoft Defender for Office 365": "OfficeATP",
    "Microsoft Defender Experts": "ThreatExperts",
    "SmartScreen": "WindowsDefenderSmartScreen",
    "Third-party sensors": "ThirdPartySensors",
}


INCIDENT_NAME = "Microsoft Defender ATP Alert {id}"  # the original's name, kept for classification rules
DEFAULT_FIRST_FETCH = "3 days"


class FetchSettings(NamedTuple):
    first_fetch: datetime
    max_fetch: int
    lookback: timedelta
    statuses: list[str]
    severities: list[str]
    detection_sources: list[str]
    evidence: bool


def fetch_settings_from_params(params: dict, now: datetime | None = None) -> FetchSettings:
    sources = arg_choices(params.get("fetch_detectionsource"), "fetch_detectionsource (DetectionSource)",
                          [*DETECTION_SOURCES, *DETECTION_SOURCES.values()])
    lookback = arg_to_int(params.get("fetch_lookback_minutes"), "fetch_lookback_minutes (Look-back window)",
                          default=10, minimum=0, maximum=1440)
    # first_fetch is the parameter's current name; instances made by the original carry first_fetch_timestamp
    first_fetch_param = next((name for name in ("first_fetch", "first_fetch_timestamp")
                              if str(params.get(name) or "").strip()), "first_fetch")
    return FetchSettings(
        first_fetch=arg_to_datetime(str(params.get(first_fetch_param) or "").strip() or DEFAULT_FIRST_FETCH,
                                    f"{first_fetch_param} (First fetch timestamp)", now=now),
        max_fetch=int(arg_to_int(params.get("max_fetch"), "max_fetch (Maximum number of incidents to fetch)",
                                 default=50, minimum=1, maximum=10_000)),
        lookback=timedelta(minutes=int(lookback)),
        statuses=arg_choices(params.get("fetch_status"), "fetch_status (Status)", ALERT_STATUSES),
        severities=arg_choices(params.get("fetch_severity"), "fetch_severity (Severity)", ALERT_SEVERITIES),
        detection_sources=[DETECTION_SOURCES.get(source, source) for source in sources],
        evidence=arg_to_bool(params.get("fetch_evidence"), "fetch_evidence (Fetch alert evidence)"),
    )


class FetchCursor(NamedTuple):
    """Where the next run starts. `time`: creation time of the newest alert taken. `floor`: no alert older than
    this is fetched again (ids below it are forgotten). `seen`: ids already taken at or after `floor`."""

    time: datetime
    floor: datetime
    seen: dict[str, datetime]

    @classmethod
    def from_last_run(cls, last_run: dict, first_fetch: datetime) -> "FetchCursor":
        if not last_run.get("last_fetch_time"):
            return cls(first_fetch, first_fetch, {})
        try:
            time_ = parse_iso_datetime(str(last_run["last_fetch_time"]))
            floor = parse_iso_datetime(str(last_run.get("forgotten_before") or last_run["last_fetch_time"]))
            seen = {str(i): parse_iso_datetime(str(t)) for i, t in (last_run.get("seen_ids") or {}).items()}
        except (ValueError, AttributeError) as exc:
            raise IntegrationError(f"The saved fetch state cannot be read ({exc}). Reset the instance's last run to "
                                   "fetch again from the first fetch time.") from exc
        # the older integration kept only the ids fetched at its cursor time
        seen.update({str(i): time_ for i in last_run.get("existing_ids") or [] if str(i) not in seen})
        return cls(time_, floor, seen)

    def window_start(self, lookback: timedelta) -> datetime:
        return max(self.time - lookback, self.floor)

    def to_last_run(self) -> dict:
        return {"last_fetch_time": format_datetime(self.time), "forgotten_before": format_datetime(self.floor),
                "seen_ids": {alert_id: format_datetime(created) for alert_id, created in self.seen.items()}}


def fetch_alerts_filter(cursor: FetchCursor, settings: FetchSettings) -> str:
    return str(ODataFilter(ALERT_FILTER_FIELDS)
               .compare("alertCreationTime", "ge", cursor.window_start(settings.lookback))
               .one_of("status", settings.statuses)
               .one_of("severity", settings.severities)
               .one_of("detectionSource", settings.detection_sources)
               .build())


def alert_created(alert: dict, default: datetime) -> datetime:
    try:
        return parse_iso_datetime(str(alert["alertCreationTime"]))
    except (KeyError, ValueError):
        return default


def select_new_alerts(alerts: Iterable[dict], cursor: FetchCursor,
                      settings: FetchSettings) -> tuple[list[dict], FetchCursor]:
    """The oldest `max_fetch` alerts not taken before, and the cursor after them. The cursor moves to the newest
    alert taken, never past one left for the next run (those are at least as new, since the window is read
    oldest first); ids are forgotten once they fall below the next window."""
    start = cursor.window_start(settings.lookback)
    dated = sorted(((alert_created(alert, start), alert) for alert in alerts), key=lambda pair: pair[0])
    seen, taken, newest = dict(cursor.seen), [], cursor.time
    for created, alert in dated:
        alert_id = str(alert.get("id") or "")
        if not alert_id or alert_id in seen:
            continue
        if len(taken) == settings.max_fetch:
            break
        taken.append(alert)
        seen[alert_id] = created
        newest = max(newest, created)
    floor = max(newest - settings.lookback, cursor.floor)
    return taken, FetchCursor(newest, floor, {i: created for i, created in seen.items() if created >= floor})


def alert_to_incident(alert: dict) -> dict:
    return {
        "name": INCIDENT_NAME.format(id=alert.get("id")),  # classification rules match on this exact name
        "details": alert.get("title") or "",
        "occurred": alert.get("alertCreationTime"),
        "severity": INCIDENT_SEVERITY.get(str(alert.get("severity") or "").lower(), 0),
        "rawJSON": json.dumps(alert),
        "dbotMirrorId": str(alert.get("id")),
    }


@command("fetch-incidents", ALERT_READ, takes_params=True)
def fetch_incidents_command(client: "Client", params: dict) -> None:
    settings = fetch_settings_from_params(params, now=client.clock.utcnow())
    cursor = FetchCursor.from_last_run(demisto.getLastRun() or {}, settings.first_fetch)
    # Every remembered id lies inside the window, so this many alerts always hold max_fetch new ones (if any).
    alerts = client.list_alerts(odata_filter=fetch_alerts_filter(cursor, settings), order_by=FETCH_ORDER,
                                limit=settings.max_fetch + len(cursor.seen), expand_evidence=settings.evidence)
    taken, next_cursor = select_new_alerts(alerts, cursor, settings)
    log_debug(f"fetch-incidents: read {len(alerts)} alerts, {len(taken)} new; cursor "
              f"{format_datetime(next_cursor.time)}, {len(next_cursor.seen)} ids remembered")
    demisto.incidents([alert_to_incident(alert) for alert in taken])
    demisto.setLastRun(next_cursor.to_last_run())  # only after success: a failed run resumes from the old cursor


# ============================================================================================
# 6.7 Advanced hunting
# ============================================================================================


# ---- advanced hunting ----------------------------------------------------------------------------
# Microsoft Graph runHuntingQuery first; the Defender API's advancedqueries/run (retiring 2027-02-01) as the
# fallback. Template commands build KQL in which every argument value is an escaped string literal.

HUNTING_API_AUTO = "Auto"
HUNTING_API_GRAPH = "Microsoft Graph"
HUNTING_API_DEFENDER = "Defender API (retiring)"
HUNTING_APIS = (HUNTING_API_AUTO, HUNTING_API_GRAPH, HUNTING_API_DEFENDER)
DEFENDER_HUNTING_RETIREMENT = datetime(2027, 2, 1, tzinfo=timezone.utc)
THREAT_HUNTING_ROLE = "ThreatHunting.Read.All"
ADVANCED_QUERY_ROLES = ("AdvancedQuery.Read.All", "AdvancedQuery.Read")
HUNT_PATH = f"{CONTEXT_PREFIX}.Hunt"
MAX_HUNT_BATCH = 10
MAX_HUNT_ROWS = 100_000  # Microsoft's row limit per query
MAX_HUNT_LIMIT = 10_000
MAX_KQL_VALUE_LENGTH = 1_000
HUNT_TIME_RANGE = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week)s?(?:\s+ago)?\s*$", re.I)
CPU_QUOTA_TEXT = "exceeded processing resources"
HUNT_LIMIT_TEXTS = ("timeout period", "result size", "allowed result size", "excessive resource", "allowed limits")
HUNT_LIMIT_HINT = "Narrow time_range, add device or file filters, or lower limit, then run it again."
GRAPH_FALLBACK_NOTE = ("Microsoft Graph could not run this hunt ({reason}); it ran on the Defender advanced-hunting "
                       "API instead, which Microsoft retires on 2027-02-01. Grant the app the Microsoft Graph "
                       f"application permission {THREAT_HUNTING_ROLE} (admin consent) to keep hunting after that.")
DEFENDER_RETIRED = ("The Defender advanced-hunting API was retired on 2027-02-01 and no longer answers. Grant the app "
                    f"the Microsoft Graph application permission {THREAT_HUNTING_ROLE} (admin consent) so hunts run "
                    "on Microsoft Graph{reason}.")


def kql_string(value: str, name: str) -> str:
    """`value` as a double-quoted KQL string literal: backslash and quote escaped, control characters refused,
    so no argument can end the literal or add an operator."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ArgumentError(f"{name} contains a line break or another control character; remove it.")
    if len(value) > MAX_KQL_VALUE_LENGTH:
        raise ArgumentError(f"{name} is longer than {MAX_KQL_VALUE_LENGTH} characters.")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kql_list(values: list[str], name: str) -> str:
    return "(" + ", ".join(kql_string(v, name) for v in values) + ")"


def hunt_hashes(args: dict, name: str, pattern: re.Pattern, what: str) -> list[str]:
    values = arg_to_list(args.get(name))
    for value in values:
        if not pattern.match(value):
            raise ArgumentError(f"{name} must be {what} (got '{value}').")
    return values


def hunt_time_range(value: Any) -> int | None:
    """Seconds back from now, from `60 minutes`, `1 day`, `2 days ago`; None when not given."""
    if value is None or str(value).strip() == "":
        return None
    match = HUNT_TIME_RANGE.match(str(value))
    if not match or int(match.group(1)) == 0:
        raise ArgumentError(f"time_range must be a span back from now such as '60 minutes', '12 hours' or '7 days' "
                            f"(got '{value}').")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()]


class HuntFilters(NamedTuple):
    """Validated template arguments: each list becomes one condition, joined by `query_operation`."""

    device_name: list[str]
    device_id: list[str]
    file_name: list[str]
    sha1: list[str]
    sha256: list[str]
    md5: list[str]
    username: list[str]
    process_cmd: str
    operation: str
    seconds: int | None
    limit: int
    page: int
    remote_ip_count: int | None

    @classmethod
    def from_args(cls, args: dict) -> "HuntFilters":
        return cls(
            device_name=arg_to_list(args.get("device_name")),
            device_id=[validate_machine_id(value, "device_id") for value in arg_to_list(args.get("device_id"))],
            file_name=arg_to_list(args.get("file_name")),
            sha1=hunt_hashes(args, "sha1", SHA1, "a SHA-1 hash (40 hexadecimal characters)"),
            sha256=hunt_hashes(args, "sha256", SHA256, "a SHA-256 hash (64 hexadecimal characters)"),
            md5=hunt_hashes(args, "md5", MD5, "an MD5 hash (32 hexadecimal characters)"),
            username=arg_to_list(args.get("username")), process_cmd=str(args.get("process_cmd") or "").strip(),
            operation=arg_choice(args.get("query_operation"), "query_operation", ("or", "and"), "or"),
            seconds=hunt_time_range(args.get("time_range")),
            limit=arg_to_int(args.get("limit"), "limit", default=50, minimum=1, maximum=MAX_HUNT_LIMIT),
            page=arg_to_int(args.get("page"), "page", default=1, minimum=1),
            remote_ip_count=arg_to_int(args.get("remote_ip_count"), "remote_ip_count", minimum=0))

    @property
    def has_device(self) -> bool:
        return bool(self.device_name or self.device_id)

    @property
    def has_file(self) -> bool:
        return bool(self.file_name or self.sha1 or self.sha256 or self.md5)


FILE_COLUMNS = {"file": ("FileName", "SHA1", "SHA256", "MD5"),
                "init": ("InitiatingProcessFileName", "InitiatingProcessSHA1", "InitiatingProcessSHA256",
                         "InitiatingProcessMD5")}
T4 = ("InitiatingProcessFileName", "InitiatingProcessVersionInfoProductName",
      "InitiatingProcessVersionInfoOriginalFileName", "InitiatingProcessCommandLine")
REGISTRY_CHANGE = ("Timestamp", "DeviceName", "ActionType", "RegistryKey", "PreviousRegistryKey", "RegistryValueName",
                   "PreviousRegistryValueName", "RegistryValueType", "RegistryValueData", "PreviousRegistryValueData",
                   *T4)
ACCOUNT_EVENT = ("AccountName", "DeviceName", "Timestamp", "AccountSid", "AccountDomain",
                 "InitiatingProcessAccountName", "InitiatingProcessLogonId")
INITIATING_BLOCK = tuple(f"InitiatingProcess{n}" for n in (
    "AccountDomain", "AccountName", "AccountSid", "AccountUpn", "AccountObjectId", "SHA1", "SHA256", "MD5", "FileName",
    "FolderPath", "CommandLine", "IntegrityLevel", "TokenElevation", "VersionInfoCompanyName",
    "VersionInfoProductName", "VersionInfoProductVersion", "VersionInfoInternalFileName",
    "VersionInfoOriginalFileName", "VersionInfoFileDescription", "FileSize", "Id", "CreationTime", "LogonId"))
POWERSHELL_IMAGES = '("powershell.exe", "powershell_ise.exe")'
SERVICES_KEY = kql_string("HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\", "key")
PRIVATE_IP_REGEX = kql_string(r"^(10\.|172\.(1[6-9]|2[0-9]|3[01])\.|192\.168\.)", "regex")
USER_TABLES = "union DeviceProcessEvents, DeviceEvents, DeviceLogonEvents"  # the Device* tables with AccountName


def project(*columns: str) -> str:
    return "| project " + ", ".join(columns)


def ordered(*columns: str) -> str:
    """Newest first, then the columns: paging is stable only over a sorted result."""
    return "| order by Timestamp desc " + project(*columns)


class HuntTemplate(NamedTuple):
    """One purpose of a template command: source, fixed conditions (constant KQL), how arguments map to columns
    (`file`: target file, `init`: initiating process, `device`, `username`), what is required, and the tail."""

    source: str
    conditions: str
    mode: str
    required: str  # any | device | file+device | username | process_cmd | "" (nothing)
    tail: str
    with_cmd: bool = False


def _t(source, conditions, mode, required, tail, with_cmd=False) -> HuntTemplate:
    return HuntTemplate(source, conditions, mode, required, tail, with_cmd)


HUNT_TEMPLATES: dict[str, dict[str | None, HuntTemplate]] = {
    "lateral-movement-evidence": {
        "network_connections": _t(
            "DeviceNetworkEvents", '(RemoteIP startswith "172.16" or RemoteIP startswith "192.168" or '
            'RemoteIP startswith "10.")', "init", "any",
            "| summarize TotalConnections = count() by DeviceName, RemoteIP, RemotePort, InitiatingProcessFileName "
            "| order by TotalConnections desc"),
        "smb_connections": _t(
            "DeviceNetworkEvents", "RemotePort == 445 and InitiatingProcessId !in (0, 4)", "init", "any",
            "| summarize RemoteIPCount = dcount(RemoteIP) by DeviceName, InitiatingProcessFileName, "
            "InitiatingProcessId, InitiatingProcessCreationTime{min_count} | order by RemoteIPCount desc"),
        "credential_dumping": _t(
            "DeviceProcessEvents", '((FileName has_any ("procdump.exe", "procdump64.exe") and ProcessCommandLine has '
            '"lsass") or (ProcessCommandLine has "lsass.exe" and (ProcessCommandLine has "-accepteula" or '
            'ProcessCommandLine contains "-ma")))', "file", "any",
            ordered("Timestamp", "DeviceName", "ActionType", "FileName", "ProcessCommandLine", "AccountName",
                    "InitiatingProcessIntegrityLevel", "InitiatingProcessTokenElevation")),
        "management_connection": _t(
            "DeviceNetworkEvents", "RemotePort in (22, 3389, 139, 135, 23, 1433)", "init", "any",
            "| summarize TotalCount = count() by DeviceName, LocalIP, RemoteIP, RemotePort "
            "| order by TotalCount desc"),
    },
    "persistence-evidence": {
        "scheduled_job": _t(
            "DeviceEvents", 'ActionType == "ScheduledTaskCreated" and InitiatingProcessAccountSid != "S-1-5-18"',
            "file", "any", ordered("Timestamp", "DeviceName", "InitiatingProcessAccountDomain",
                                   "InitiatingProcessAccountName", "AdditionalFields")),
        "registry_entry": _t(
            "DeviceRegistryEvents", 'ActionType == "RegistryValueSet"', "init", "process_cmd",
            ordered("Timestamp", "DeviceName", "RegistryKey", "RegistryValueType", "PreviousRegistryValueData",
                    "RegistryValueName", "PreviousRegistryValueName", "PreviousRegistryKey",
                    "InitiatingProcessFileName"), with_cmd=True),
        "startup_folder_changes": _t(
            "DeviceFileEvents", "FolderPath contains " + kql_string(
                "\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup\\", "path")
            + ' and ActionType == "FileCreated"', "file", "any",
            ordered("Timestamp", "DeviceName", "FileName", "FolderPath", *T4)),
        "new_service_created": _t(
            "DeviceRegistryEvents", f'RegistryKey contains {SERVICES_KEY} and ActionType == "RegistryKeyCreated"',
            "init", "any", ordered("Timestamp", "DeviceName", "RegistryKey", "RegistryValueName",
                                   "RegistryValueType", "RegistryValueData", *T4), with_cmd=True),
        "service_updated": _t(
            "DeviceRegistryEvents", f'RegistryKey contains {SERVICES_KEY} and ActionType in ("RegistryValueSet", '
            '"RegistryKeyCreated")', "init", "any", ordered(*REGISTRY_CHANGE), with_cmd=True),
        "file_replaced": _t(
            "DeviceFileEvents", "FolderPath contains " + kql_string("C:\\Program Files", "path")
            + ' and ActionType == "FileModified"', "file", "any",
            ordered("Timestamp", "DeviceName", "ActionType", "FileName", "FolderPath", *T4)),
        "new_user": _t("DeviceEvents", 'ActionType == "UserAccountCreated"', "file", "any", ordered(*ACCOUNT_EVENT)),
        "new_group": _t("DeviceEvents", 'ActionType == "SecurityGroupCreated"', "file", "any",
                        ordered(*ACCOUNT_EVENT, "AdditionalFields")),
        "group_user_change": _t("DeviceEvents", 'ActionType == "UserAccountAddedToLocalGroup"', "file", "any",
                                "| distinct AccountSid | order by AccountSid asc"),
        "local_firewall_change": _t(
            "DeviceRegistryEvents", "RegistryKey contains " + kql_string(
                "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\SharedAccess\\Parameters\\FirewallPolicy",
                "key"), "init", "any", ordered(*REGISTRY_CHANGE), with_cmd=True),
        "host_file_change": _t(
            "DeviceFileEvents", "FolderPath contains " + kql_string("C:\\Windows\\System32\\drivers\\etc\\hosts", "path")
            + ' and ActionType == "FileModified"', "init", "any",
            ordered("Timestamp", "DeviceName", "ActionType", "FileName", "FolderPath", "SHA1", "SHA256", "MD5", *T4),
            with_cmd=True),
    },
    "file-origin": {
        None: _t("DeviceFileEvents", "", "file", "any", ordered(
            "Timestamp", "FileName", "FolderPath", "ActionType", "DeviceName", "MD5", "SHA1", "SHA256", "FileSize",
            "FileOriginUrl", "FileOriginIP", "InitiatingProcessCommandLine", "InitiatingProcessFileName",
            "InitiatingProcessParentFileName")),
    },
    "process-details": {
        "parent_process": _t("DeviceProcessEvents", "", "file", "any", ordered(
            "Timestamp", "DeviceId", "DeviceName", "ActionType", "ProcessId", "ProcessCommandLine",
            "ProcessCreationTime", "AccountSid", "AccountName", "AccountDomain", *INITIATING_BLOCK)),
        "grandparent_process": _t("DeviceProcessEvents", "", "file", "any", ordered(
            "Timestamp", "DeviceId", "DeviceName", "ActionType", "ProcessId", "ProcessCommandLine",
            "ProcessIntegrityLevel", "ProcessCreationTime", "AccountSid", "AccountName", "AccountDomain",
            "AccountObjectId", "AccountUpn", "InitiatingProcessSHA1", "InitiatingProcessSHA256",
            "InitiatingProcessMD5", "InitiatingProcessFileName", "InitiatingProcessId", "InitiatingProcessCreationTime",
            "InitiatingProcessFolderPath", "InitiatingProcessParentFileName", "InitiatingProcessParentId",
            "InitiatingProcessParentCreationTime")),
        "process_details": _t(
            "DeviceProcessEvents", "", "file", "any",
            "| distinct SHA1, FileName, SHA256, MD5 | join kind=inner (DeviceFileCertificateInfo | distinct SHA1, "
            "IsSigned, Signer, SignatureType, Issuer, CertificateExpirationTime, IsTrusted, IsRootSignerMicrosoft) "
            "on SHA1 | distinct FileName, SHA1, SHA256, IsSigned, Signer, SignatureType, Issuer, "
            "CertificateExpirationTime, IsTrusted, IsRootSignerMicrosoft | order by FileName asc, SHA1 asc"),
        "beaconing_evidence": _t("DeviceNetworkEvents", "", "init", "any", ordered(
            "Timestamp", "DeviceId", "DeviceName", "ActionType", "RemoteIP", "RemotePort", "RemoteUrl", "LocalIP",
            "LocalPort", "Protocol", "LocalIPType", "RemoteIPType", "InitiatingProcessSHA1", "InitiatingProcessSHA256",
            "InitiatingProcessMD5", "InitiatingProcessFileName")),
        "powershell_execution_unsigned_files": _t(
            "DeviceProcessEvents", f"FileName in~ {POWERSHELL_IMAGES} and InitiatingProcessFileName !~ "
            '"SenseIR.exe" and InitiatingProcessParentFileName !~ "MsSense.exe" and '
            'InitiatingProcessSignatureStatus != "Valid" and InitiatingProcessFileName !~ "CompatTelRunner.exe" and '
            'InitiatingProcessParentFileName !~ "CompatTelRunner.exe"', "init", "",
            "| distinct InitiatingProcessFolderPath, InitiatingProcessFileName, InitiatingProcessParentFileName, "
            "InitiatingProcessVersionInfoOriginalFileName, InitiatingProcessVersionInfoProductName, "
            "InitiatingProcessCommandLine, InitiatingProcessSignerType, InitiatingProcessSignatureStatus "
            "| order by InitiatingProcessFolderPath asc, InitiatingProcessCommandLine asc"),
        "process_excecution_powershell": _t(
            "DeviceProcessEvents", f"FileName in~ {POWERSHELL_IMAGES}", "init", "file+device", ordered(
                "Timestamp", "FileName", "FolderPath", "ProcessVersionInfoProductName", "ProcessCommandLine",
                "ProcessCreationTime", *T4, "InitiatingProcessFolderPath", "InitiatingProcessSignerType",
                "InitiatingProcessSignatureStatus", "DeviceId", "DeviceName")),
    },
    "network-connections": {
        "external_addresses": _t(
            "DeviceNetworkEvents", f"not(RemoteIP matches regex {PRIVATE_IP_REGEX})", "init", "any",
            "| summarize TotalConnections = count() by DeviceName, RemoteIP, RemotePort, InitiatingProcessFileName, "
            "InitiatingProcessFolderPath | order by TotalConnections desc"),
        "dns_query": _t("DeviceNetworkEvents", "RemotePort == 53", "init", "any",
                        ordered("Timestamp", "DeviceName", "ActionType", "RemoteIP",
                                "Packetinfo = url_decode(AdditionalFields)")),
        "encoded_commands": _t(
            "DeviceProcessEvents", f"FileName in~ {POWERSHELL_IMAGES} and ProcessCommandLine matches regex "
            + kql_string(r"(?i)\s-(e|ec|en|enc|enco|encod|encode|encoded|encodedcommand)\s", "regex"),
            "device", "device", "| order by Timestamp desc"),
    },
    "privilege-escalation": {
        None: _t("DeviceLogonEvents", 'IsLocalAdmin == true and AccountDomain =~ tostring(split(DeviceName, ".")[0])',
                 "device", "device", ordered("Timestamp", "DeviceId", "DeviceName", "ActionType", "LogonType",
                                             "AccountDomain", "AccountName", "IsLocalAdmin",
                                             "InitiatingProcessFileName")),
    },
    "tampering": {
        None: _t(
            "DeviceProcessEvents",
            'InitiatingProcessFileName in~ ("sc.exe", "net1.exe", "net.exe", "taskkill.exe", "cmd.exe", '
            '"powershell.exe") and ((InitiatingProcessCommandLine has_any ("stop", "disable", "delete") and '
            'InitiatingProcessCommandLine has_any ("sense", "windefend", "mssecflt", "healthservice") and '
            'InitiatingProcessParentFileName !~ "cscript.exe") or (InitiatingProcessCommandLine has_any '
            '("DisableRealtimeMonitoring", "DisableBehaviorMonitoring", "DisableIOAVProtection") and '
            'InitiatingProcessCommandLine has "Set-MpPreference" and InitiatingProcessCommandLine contains "$true") '
            'or (InitiatingProcessCommandLine has_any ("sgrmbroker.exe", "mssense.exe") and '
            'InitiatingProcessCommandLine has "IM") or (InitiatingProcessCommandLine contains "reg" and '
            'InitiatingProcessCommandLine has "add" and InitiatingProcessCommandLine contains '
            + kql_string("\\Policies\\Microsoft\\Windows", "key")
            + ' and InitiatingProcessCommandLine has_any ("Windows Defender", "Windows Advanced Threat Protection") '
            'and InitiatingProcessCommandLine has_any ("ForceDefenderPassiveMode", "DisableAntiSpyware") and '
            'InitiatingProcessCommandLine contains "/d 1") or (InitiatingProcessCommandLine has "start" and '
            'InitiatingProcessCommandLine has "config" and InitiatingProcessCommandLine has_any ("sense", '
            '"windefend") and InitiatingProcessCommandLine has_any ("demand", "disabled")))', "device", "",
            "| order by Timestamp desc | project Timestamp, Computer = DeviceName, Account = "
            "iff(isempty(InitiatingProcessAccountUpn), InitiatingProcessAccountName, InitiatingProcessAccountUpn), "
            "AccountDomain, ProcessName = InitiatingProcessFileName, ProcessNameFullPath = FolderPath, "
            "Activity = ActionType, CommandLine = InitiatingProcessCommandLine, InitiatingProcessParentFileName"),
    },
    "cover-up": {
        "file_deleted": _t("DeviceFileEvents", 'ActionType == "FileDeleted"', "file", "any", ordered(
            "Timestamp", "DeviceId", "DeviceName", "FileName", "FolderPath", "InitiatingProcessFileName",
            "InitiatingProcessVersionInfoProductName", "InitiatingProcessCommandLine")),
        "event_log_cleared": _t(
            "DeviceProcessEvents", '((ProcessCommandLine has "WEVTUTIL" and ProcessCommandLine has_any ("CL", '
            '"clear-log")) or ProcessCommandLine contains "Clear-EventLog")', "device", "device",
            "| summarize LogClearCount = dcount(ProcessCommandLine), ClearedLogList = make_set(ProcessCommandLine) "
            "by DeviceId, DeviceName, Timestamp = bin(Timestamp, 5m), FileName, InitiatingProcessFileName "
            "| order by Timestamp desc"),
        "compromised_information": _t(USER_TABLES, "", "username", "username", ordered(
            "Timestamp", "DeviceId", "DeviceName", "ActionType", "FileName", "FolderPath", "SHA1", "SHA256", "MD5",
            "InitiatingProcessFileName")),
        "connected_devices": _t(USER_TABLES, "", "username", "username",
                                "| distinct DeviceName | order by DeviceName asc"),
        "action_types": _t(USER_TABLES, "", "username", "username",
                           "| summarize Number_of_actions = count() by ActionType, DeviceName "
                           "| order by Number_of_actions desc"),
        "common_files": _t(USER_TABLES, "", "username", "username",
                           "| summarize Number_of_accoiated_events = count() by FileName, MD5, SHA1, SHA256 "
                           "| order by Number_of_accoiated_events desc"),
    },
}
# Context key and readable title per template command
HUNT_COMMANDS = {
    "lateral-movement-evidence": ("HuntLateralMovementEvidence", "Lateral Movement Evidence"),
    "persistence-evidence": ("HuntPersistenceEvidence", "Persistence Evidence"),
    "file-origin": ("HuntFileOrigin", "File Origin"),
    "process-details": ("HuntProcessDetails", "Process Details"),
    "network-connections": ("HuntNetworkConnections", "Network Connections"),
    "privilege-escalation": ("HuntPrivilegeEscalation", "Privilege Escalation"),
    "tampering": ("HuntTampering", "Tampering"),
    "cover-up": ("HuntCoverUp", "Cover Up"),
}
REQUIREMENTS = {
    "any": ("at least one of device_name, device_id, file_name, sha1, sha256 or md5",
            lambda f, t: f.has_device or f.has_file or (t.with_cmd and bool(f.process_cmd))),
    "device": ("device_name or device_id", lambda f, t: f.has_device),
    "file+device": ("a file (file_name, sha1, sha256 or md5) and a device (device_name or device_id)",
                    lambda f, t: f.has_device and f.has_file),
    "username": ("username", lambda f, t: bool(f.username)),
    "process_cmd": ("process_cmd", lambda f, t: bool(f.process_cmd)),
    "": ("", lambda f, t: True),
}


def argument_conditions(template: HuntTemplate, f: HuntFilters) -> list[str]:
    """One condition per given argument list, each value an escaped literal."""
    if template.mode == "username":
        return [f"AccountName has_any {kql_list(f.username, 'username')}"] if f.username else []
    conditions = []
    if f.device_name:
        conditions.append(f"DeviceName has_any {kql_list(f.device_name, 'device_name')}")
    if f.device_id:
        conditions.append(f"DeviceId in~ {kql_list(f.device_id, 'device_id')}")
    if template.mode in FILE_COLUMNS:
        name, sha1, sha256, md5 = FILE_COLUMNS[template.mode]
        for column, values, arg, op in ((name, f.file_name, "file_name", "has_any"), (sha1, f.sha1, "sha1", "in~"),
                                        (sha256, f.sha256, "sha256", "in~"), (md5, f.md5, "md5", "in~")):
            if values:
                conditions.append(f"{column} {op} {kql_list(values, arg)}")
    if template.with_cmd and f.process_cmd:
        conditions.append(f"InitiatingProcessCommandLine contains {kql_string(f.process_cmd, 'process_cmd')}")
    return conditions


def build_hunt_query(template: HuntTemplate, f: HuntFilters) -> str:
    """source | time filter | where fixed and (arguments joined by query_operation) | tail | take limit*page."""
    what, satisfied = REQUIREMENTS[template.required]
    if not satisfied(f, template):
        raise ArgumentError(f"This query needs {what}.")
    parts = [template.source]
    if f.seconds:
        parts.append(f"| where Timestamp > ago({f.seconds}s)")
    group = f" {f.operation} ".join(argument_conditions(template, f))
    where = " and ".join(c for c in (template.conditions, f"({group})" if group else "") if c)
    if where:
        parts.append(f"| where {where}")
    min_count = f" | where RemoteIPCount > {f.remote_ip_count}" if f.remote_ip_count is not None else ""
    parts.append(template.tail.replace("{min_count}", min_count))
    parts.append(f"| take {f.limit * f.page}")
    return "\n".join(parts)


HUNTING_ROLES = (THREAT_HUNTING_ROLE, *ADVANCED_QUERY_ROLES)
HUNT_DEFAULT_TIMEOUT = 200  # seconds; Microsoft stops a query after 200 s (Defender API), about 3 minutes (Graph)
HUNT_MAX_TIMEOUT = 600
LEADING_TABLE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\||$)")


class HuntResult(NamedTuple):
    """One query's answer, the same whichever back end ran it."""

    columns: list[dict]  # [{"name", "type"}]
    rows: list[dict]
    api: str


def normalise_hunt_response(body: Any, api: str) -> HuntResult:
    """Graph's `schema`/`results` and the Defender API's `Schema`/`Results`; key case drifts, so read both.
    ReportId is kept as a string: it is 64-bit, and playbooks pass it on to create-alert."""
    body = body if isinstance(body, dict) else {}
    schema = body.get("schema") or body.get("Schema") or []
    columns = [{"name": c.get("name") or c.get("Name"), "type": c.get("type") or c.get("Type")}
               for c in schema if isinstance(c, dict)]
    rows = [dict(row) for row in body.get("results") or body.get("Results") or [] if isinstance(row, dict)]
    for row in rows:
        if isinstance(row.get("ReportId"), int):
            row["ReportId"] = str(row["ReportId"])
    return HuntResult(columns, rows, api)


def iso_duration(seconds: int) -> str:
    return f"PT{seconds}S"


def defender_time_filter(query: str, seconds: int) -> str:
    """The Defender API has no Timespan: filter right after the source table, which is safe only when the query
    starts with a table name (a `let` or `union` block would change meaning)."""
    match = LEADING_TABLE.match(query)
    if not match:
        raise ArgumentError("time_range needs Microsoft Graph, or a query that starts with a table name when it runs "
                            "on the Defender API. Add `| where Timestamp > ago(...)` to the query instead.")
    return f"{match.group(1)} | where Timestamp > ago({seconds}s) {query[match.end(1):].lstrip()}".rstrip()


def hunting_failure(exc: ApiError) -> IntegrationError:
    """Microsoft's reason plus what to do: a spent CPU quota is reported, not retried; limits get a hint."""
    text = str(exc)
    if exc.status == 429 and CPU_QUOTA_TEXT in text:
        return ApiError(f"Advanced hunting is blocked: the tenant's CPU quota for queries is spent ({text}). "
                        "Microsoft unblocks queries at its next 15-minute or daily cycle; the command did not "
                        "retry. Run fewer or narrower hunts.", status=429, code=exc.code)
    if any(marker in text.lower() for marker in HUNT_LIMIT_TEXTS):
        return ApiError(f"{text} {HUNT_LIMIT_HINT}", status=exc.status, code=exc.code)
    if exc.status is None and text.startswith("Timed out"):
        return ApiError(f"{text} A slow query takes longer than the timeout argument allows: raise timeout (up to "
                        f"{HUNT_MAX_TIMEOUT} s), or {HUNT_LIMIT_HINT[0].lower()}{HUNT_LIMIT_HINT[1:]}")
    return exc


class HuntingApi:
    """Advanced hunting calls (mixed into Client): Microsoft Graph runHuntingQuery, the Defender API fallback,
    and the choice between them (`hunting_api` parameter)."""

    hunting_api: str = HUNTING_API_AUTO
    graph_url: str = ""
    graph_auth: "BearerAuth | None" = None
    hunting_notes: list[str]
    _graph_problem: str | None = None
    _graph_checked: bool = False
    _fallback_noted: bool = False

    def configure_hunting(self, params: dict, graph_url: str, graph_auth: "BearerAuth | None") -> None:
        self.hunting_api = str(arg_choice(params.get("hunting_api"), "Advanced hunting API", HUNTING_APIS,
                                          HUNTING_API_AUTO))
        self.graph_url, self.graph_auth, self.hunting_notes = graph_url.rstrip("/"), graph_auth, []

    def run_graph_hunting_query(self, query: str, seconds: int | None, timeout: int) -> dict:
        body = {"Query": query, **({"Timespan": iso_duration(seconds)} if seconds else {})}
        return self.request("POST", f"{self.graph_url}/v1.0/security/runHuntingQuery", json_body=body,
                            auth=self.graph_auth, read_timeout=timeout) or {}

    def run_defender_hunting_query(self, query: str, timeout: int) -> dict:
        return self.request("POST", "advancedqueries/run", json_body={"Query": query}, read_timeout=timeout) or {}

    def hunt(self, query: str, *, seconds: int | None = None, timeout: int = HUNT_DEFAULT_TIMEOUT) -> HuntResult:
        """Runs one query on the configured back end; Auto prefers Graph and falls back to the Defender API when
        Graph cannot be used, saying so once in `hunting_notes`."""
        if self.hunting_api == HUNTING_API_DEFENDER:
            return self._defender_hunt(query, seconds, timeout, None)
        problem = self.graph_problem()
        if problem is None:
            try:
                return normalise_hunt_response(self.run_graph_hunting_query(query, seconds, timeout), "graph")
            except ApiError as exc:
                if exc.status != 403 or self.hunting_api == HUNTING_API_GRAPH:
                    raise hunting_failure(exc) from exc
                problem = self._graph_problem = "Microsoft Graph refused the query (HTTP 403)"
        if self.hunting_api == HUNTING_API_GRAPH:
            raise ConfigurationError(f"Advanced hunting API is 'Microsoft Graph', but {problem}. Grant the app the "
                                     f"Microsoft Graph application permission {THREAT_HUNTING_ROLE} (admin "
                                     "consent), or choose Auto.")
        return self._defender_hunt(query, seconds, timeout, problem)

    def graph_problem(self) -> str | None:
        """Why Graph cannot run hunts (no token, or a token without ThreatHunting.Read.All); None when it can."""
        if not self._graph_checked:
            self._graph_checked = True
            self._graph_problem = self._check_graph()
        return self._graph_problem

    def graph_roles(self) -> tuple[set[str] | None, str | None]:
        """The permissions in the Microsoft Graph token (None when the token is not a readable JWT), or why
        there is no token."""
        if self.graph_auth is None:
            return set(), "no Microsoft Graph token can be requested with this authentication setup"
        try:
            token = self.graph_auth.provider.get_token()
        except IntegrationError as exc:
            return set(), f"no Microsoft Graph token could be had ({exc})"
        try:
            claims = jwt_claims(token)
        except AuthError:
            return None, None
        return set(claims.get("roles") or []) | set(str(claims.get("scp") or "").split()), None

    def _check_graph(self) -> str | None:
        roles, problem = self.graph_roles()
        if problem or roles is None:  # an unreadable token: let Graph decide
            return problem
        if THREAT_HUNTING_ROLE not in roles:
            return f"the Microsoft Graph token lacks the {THREAT_HUNTING_ROLE} permission"
        return None

    def _defender_hunt(self, query: str, seconds: int | None, timeout: int, graph_problem: str | None) -> HuntResult:
        if self.clock.utcnow() >= DEFENDER_HUNTING_RETIREMENT:
            raise ConfigurationError(DEFENDER_RETIRED.format(reason=f" ({graph_problem})" if graph_problem else ""))
        if graph_problem and not self._fallback_noted:
            self._fallback_noted = True  # said once per run, in the first result
            self.hunting_notes.append(GRAPH_FALLBACK_NOTE.format(reason=graph_problem))
        try:
            body = self.run_defender_hunting_query(defender_time_filter(query, seconds) if seconds else query, timeout)
        except ApiError as exc:
            raise hunting_failure(exc) from exc
        return normalise_hunt_response(body, "defender")


def hunt_timeout(args: dict) -> int:
    return int(arg_to_int(args.get("timeout"), "timeout", default=HUNT_DEFAULT_TIMEOUT, minimum=1,
                          maximum=HUNT_MAX_TIMEOUT))


def hunt_result(client: "Client", result: HuntResult, title: str, path: str, *, query: str | None = None,
                rows: list[dict] | None = None, context: Any = None) -> CommandResult:
    """The shared result builder over the query's own columns; notes (fallback) and the query go in the text."""
    rows = result.rows if rows is None else rows
    spec = EntitySpec({c["name"]: c["name"] for c in result.columns}, path=path, key=(),
                      headers=tuple(c["name"] for c in result.columns))
    out = entity_result(spec, rows, title)
    if context is not None:
        out.outputs = {f"{CONTEXT_PREFIX}.{path}": context}
    elif not out.outputs:
        out.outputs = {f"{CONTEXT_PREFIX}.{path}": []}
    if query is not None:
        out.readable = f"### The Query:\n```\n{query}\n```\n{out.readable}"
    if client.hunting_notes:
        out.readable += "\n\n" + "\n".join(f"**Note:** {note}" for note in client.hunting_notes)
        client.hunting_notes.clear()
    return out


def run_template(client: "Client", args: dict, command_name: str) -> CommandResult:
    key, label = HUNT_COMMANDS[command_name]
    templates = HUNT_TEMPLATES[command_name]
    purpose = None if None in templates else required_choice(args, "query_purpose", list(templates))
    filters = HuntFilters.from_args(args)
    query = build_hunt_query(templates[purpose], filters)
    timeout = hunt_timeout(args)
    show_query = arg_to_bool(args.get("show_query"), "show_query")
    result = client.hunt(query, timeout=timeout)
    start = (filters.page - 1) * filters.limit
    rows = result.rows[start:start + filters.limit]
    path = f"{key}.Result" + (f".{purpose}" if purpose else "")
    title = f"{label} Hunt ({purpose}) Results" if purpose else f"{label} Hunt Results"
    return hunt_result(client, result, title, path, query=query if show_query else None, rows=rows)


def template_command(suffix: str) -> Callable:
    name = f"microsoft-atp-advanced-hunting-{suffix}"

    @command(name, HUNTING_ROLES)
    def hunt_template_command(client: "Client", args: dict) -> CommandResult:
        return run_template(client, args, suffix)

    hunt_template_command.__name__ = f"hunt_{suffix.replace('-', '_')}_command"
    return hunt_template_command


for _suffix in HUNT_COMMANDS:
    template_command(_suffix)


class NamedQuery(NamedTuple):
    name: str | None
    query: str
    timeout: int
    seconds: int | None


def hunt_batch_items(text: str) -> list[dict]:
    try:
        parsed = json.loads(text)
    except ValueError:
        raise ArgumentError('query_batch must be a JSON list of {"name", "query"} objects, e.g. '
                            '[{"name": "logons", "query": "DeviceLogonEvents | take 10"}].') from None
    if isinstance(parsed, dict) and isinstance(parsed.get("queries"), list):
        parsed = parsed["queries"]
    if not isinstance(parsed, list) or not parsed or not all(isinstance(item, dict) for item in parsed):
        raise ArgumentError('query_batch must be a non-empty JSON list of {"name", "query"} objects.')
    if len(parsed) > MAX_HUNT_BATCH:
        raise ArgumentError(f"query_batch holds {len(parsed)} queries; at most {MAX_HUNT_BATCH} are allowed.")
    return parsed


def hunt_queries(args: dict) -> tuple[list[NamedQuery], bool]:
    """The queries to run, and whether they came as a batch. Batch items may override timeout and time_range."""
    query, batch = str(args.get("query") or "").strip(), str(args.get("query_batch") or "").strip()
    if query and batch:
        raise ArgumentError("Both query and query_batch were given; give one of them.")
    if not query and not batch:
        raise ArgumentError("Give query (one KQL query) or query_batch (a JSON list of named queries).")
    timeout, seconds = hunt_timeout(args), hunt_time_range(args.get("time_range"))
    if query:
        return [NamedQuery(str(args.get("name") or "").strip() or None, query, timeout, seconds)], False
    queries, names = [], set()
    for index, item in enumerate(hunt_batch_items(batch), start=1):
        name, text = str(item.get("name") or "").strip(), str(item.get("query") or "").strip()
        if not name or not text:
            raise ArgumentError(f"query_batch item {index} needs both a name and a query.")
        if name in names:
            raise ArgumentError(f"query_batch has two queries named '{name}'; names must differ.")
        names.add(name)
        queries.append(NamedQuery(name, text, hunt_timeout({"timeout": item.get("timeout", timeout)}),
                                  hunt_time_range(item["time_range"]) if item.get("time_range") else seconds))
    return queries, True


@command("microsoft-atp-advanced-hunting", HUNTING_ROLES)
def advanced_hunting_command(client: "Client", args: dict) -> list[CommandResult]:
    """Raw KQL, one query or a batch run in turn; each named result sits under its name."""
    queries, is_batch = hunt_queries(args)
    results, collected = [], []
    for item in queries:
        result = client.hunt(item.query, seconds=item.seconds, timeout=item.timeout)
        collected.append({item.name: result.rows} if item.name else result.rows)
        title = f"Hunt results for {item.name} query" if item.name else "Hunt results"
        results.append(hunt_result(client, result, title, "Hunt.Result", context=collected[-1]))
    if is_batch:
        for result in results:
            result.outputs = {}
        results[-1].outputs = {f"{HUNT_PATH}.Result": collected}
    return results


# ============================================================================================
# 6.8 Indicators
# ============================================================================================


TI_ROLES = ("Ti.ReadWrite", "Ti.ReadWrite.All")
INDICATOR_TYPES = ("FileSha1", "FileSha256", "FileMd5", "IpAddress", "DomainName", "Url", "CertificateThumbprint")
INDICATOR_ACTIONS = ("Audit", "Block", "BlockAndRemediate", "Allowed", "Warn")
INDICATOR_SEVERITIES = ("Informational", "Low", "Medium", "High")
HASH_TYPES = {"FileSha1": (40, "SHA-1 hash"), "FileSha256": (64, "SHA-256 hash"), "FileMd5": (32, "MD5 hash"),
              "CertificateThumbprint": (40, "certificate thumbprint (SHA-1)")}
NETWORK_TYPES = ("IpAddress", "DomainName", "Url")
# Actions Microsoft accepts only for some types; Audit also needs generateAlert.
INDICATOR_ACTION_TYPES = {"Warn": ("Url", "DomainName"), "BlockAndRemediate": tuple(HASH_TYPES)}
INDICATOR_FILTER_FIELDS = ("application", "createdByDisplayName", "expirationTime", "generateAlert", "title",
                           "rbacGroupNames", "rbacGroupIds", "indicatorValue", "indicatorType",
                           "creationTimeDateTimeUtc", "createdBy", "action", "severity")
INDICATOR_ITEM_FIELDS = ("indicatorValue", "indicatorType", "action", "title", "description", "expirationTime",
                         "severity", "application", "recommendedActions", "rbacGroupNames", "generateAlert",
                         "educateUrl", "externalID")
INDICATOR_ID = re.compile(r"^\d{1,19}$")
IMPORT_BATCH_SIZE = 500  # Microsoft's limit per import and per BatchDelete call
IMPORT_CALLS_PER_MINUTE = 30
MAX_ACTIVE_INDICATORS = 15_000
CAP_REFUSAL = re.compile(r"15,?000|maximum number of active indicators", re.IGNORECASE)
OWN_INDICATORS_NOTE = ("An application granted Ti.ReadWrite but not Ti.ReadWrite.All sees only the indicators it "
                       "created.")
# The score an indicator's action implies for the value: allowed is good, detect-only is suspicious, blocking is bad.
ACTION_SCORES = {"Allowed": 1, "Audit": 2, "Alert": 2, "Warn": 2, "Block": 3, "BlockAndRemediate": 3,
                 "AlertAndBlock": 3}
FILE_CONTEXT_KEY = ("File(val.MD5 && val.MD5 == obj.MD5 || val.SHA1 && val.SHA1 == obj.SHA1 || "
                    "val.SHA256 && val.SHA256 == obj.SHA256 || val.SHA512 && val.SHA512 == obj.SHA512)")
# Indicator type -> (standard context key, its field, DBotScore type)
STANDARD_CONTEXTS = {
    "FileSha1": (FILE_CONTEXT_KEY, "SHA1", "file"), "FileSha256": (FILE_CONTEXT_KEY, "SHA256", "file"),
    "FileMd5": (FILE_CONTEXT_KEY, "MD5", "file"), "IpAddress": ("IP(val.Address && val.Address == obj.Address)",
                                                               "Address", "ip"),
    "DomainName": ("Domain(val.Name && val.Name == obj.Name)", "Name", "domain"),
    "Url": ("URL(val.Data && val.Data == obj.Data)", "Data", "url"),
}
DBOT_SCORE_KEY = ("DBotScore(val.Indicator && val.Indicator == obj.Indicator && val.Vendor == obj.Vendor && "
                  "val.Type == obj.Type)")

INDICATOR = EntitySpec({name: name for name in (
    "id", "indicatorValue", "indicatorType", "action", "severity", "title", "description", "expirationTime",
    "recommendedActions", "generateAlert", "rbacGroupNames", "rbacGroupIds", "mitreTechniques", "lastUpdateTime",
    "createdByDisplayName", "application", "createdBySource", "historicalDetection", "lastUpdatedBy",
    "creationTimeDateTimeUtc", "category", "createdBy", "educateUrl", "sourceType", "externalID")},
    path="Indicators", key=("id",), headers=("id", "indicatorValue", "indicatorType", "action", "severity", "title",
                                             "expirationTime"))
IMPORT_OUTCOME = EntitySpec({"id": "ID", "indicator": "Value", "isFailed": "IsFailed",
                             "failureReason": "FailureReason", "outcome": "Outcome"},
                            path="Indicators", key=("ID",), headers=("Value", "Outcome", "ID", "FailureReason"))


class IndicatorsApi:
    """Defender API calls of the indicators (the Defender Indicators API) area (mixed into Client)."""

    def list_indicators(self, *, odata_filter: str | None = None, limit: int | None = None, offset: int = 0,
                        page_size: int = MAX_PAGE_SIZE) -> Iterator[dict]:
        params = {"$filter": odata_filter} if odata_filter else {}
        return self.paginate("indicators", params, limit=limit, offset=offset, page_size=page_size)

    def get_indicator(self, indicator_id: str) -> dict:
        return self.request("GET", f"indicators/{segment(indicator_id, 'indicator_id')}") or {}

    def submit_indicator(self, indicator: dict) -> dict:
        return self.request("POST", "indicators", json_body=indicator) or {}

    def import_indicators(self, indicators: list[dict]) -> list[dict]:
        return (self.request("POST", "indicators/import", json_body={"Indicators": indicators}) or {}).get(
            "value") or []

    def delete_indicator(self, indicator_id: str) -> None:
        self.request("DELETE", f"indicators/{segment(indicator_id, 'indicator_id')}", expect=None)

    def batch_delete_indicators(self, indicator_ids: list[str]) -> None:
        self.request("POST", "indicators/BatchDelete", json_body={"IndicatorIds": indicator_ids}, expect=None)


# ---- indicators: checking values before any call ----------------------------------------------


def validate_indicator_id(value: Any, name: str = "indicator_id") -> str:
    text = str(value or "").strip()
    if not INDICATOR_ID.match(text):
        raise ArgumentError(f"{name} must be a numeric indicator ID such as 995 (got '{value}'). Find IDs with "
                            "!microsoft-atp-sc-indicator-list.")
    return text


def indicator_key(kind: str, value: str) -> tuple[str, str]:
    """What Microsoft treats as the same indicator: hashes and domains compare case-insensitively."""
    return kind, value if kind == "Url" else value.lower()


def validate_url(value: str, name: str) -> str:
    """An http(s) URL, or a host with a path, whose host is a domain name or an IP address."""
    text = value.strip()
    try:
        parts = urlparse(text if "://" in text else f"http://{text}")
        host = parts.hostname or ""
    except ValueError:
        host, parts = "", None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not host or any(c.isspace() for c in text):
        raise ArgumentError(f"{name} must be a URL such as https://contoso.com/path (got '{value}').")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        validate_domain(host, name)
    return text


def validate_indicator_value(kind: str, value: str, name: str) -> str:
    """The value checked for its indicator type, as Microsoft would check it; errors name the argument."""
    text = str(value).strip()
    if kind in HASH_TYPES:
        length, label = HASH_TYPES[kind]
        if len(text) != length or not re.fullmatch(r"[0-9a-fA-F]+", text):
            raise ArgumentError(f"{name} must be a {label} of {length} hexadecimal characters for indicator type "
                                f"{kind} (got '{value}').")
        return text.lower()
    if kind == "IpAddress":
        if "/" in text:
            raise ArgumentError(f"{name} must be a single IP address: the Indicators API has no CIDR blocks "
                                f"(got '{value}').")
        if "%" in text:
            raise ArgumentError(f"{name} must be an IP address without a zone ID (got '{value}').")
        return validate_ip(text, name)
    if kind == "DomainName":
        return validate_domain(text, name).rstrip(".")
    return validate_url(text, name)


def future_time(value: Any, name: str, now: datetime) -> datetime:
    """An expiration: a relative time counted forward from now ('14 days') or an ISO 8601 time in the future."""
    text = str(value).strip()
    match = RELATIVE_TIME.match(text)
    if match and "ago" not in text.lower():
        when = now + timedelta(seconds=int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()])
    else:
        when = arg_to_datetime(text, name, now=now)
    if when is None or when <= now:
        raise ArgumentError(f"{name} must be in the future, e.g. '14 days' or an ISO 8601 time after "
                            f"{format_datetime(now)} (got '{value}').")
    return when


class IndicatorNames(NamedTuple):
    """What the user calls each Indicators API field, so errors name the argument (or batch field) to fix."""

    value: str = "indicatorValue"
    type: str = "indicatorType"
    action: str = "action"
    severity: str = "severity"
    expiration: str = "expirationTime"
    generate_alert: str = "generateAlert"
    educate_url: str = "educateUrl"
    title: str = "title"
    description: str = "description"


SC_ARGUMENT_NAMES = IndicatorNames("indicator_value", "indicator_type", "action", "severity", "expiration_time",
                                   "generate_alert", "educate_url", "indicator_title", "indicator_description")


def checked_indicator(fields: dict, names: IndicatorNames, now: datetime) -> dict:
    """A submit body in Microsoft's field names, every value checked; Microsoft's action/type rules applied."""
    kind = arg_choice(fields.get("indicatorType"), names.type, INDICATOR_TYPES)
    action = arg_choice(fields.get("action"), names.action, INDICATOR_ACTIONS)
    for field_name, shown in (("indicatorValue", names.value), ("title", names.title),
                              ("description", names.description)):
        if not str(fields.get(field_name) or "").strip():
            raise ArgumentError(f"{shown} is required.")
    if kind is None or action is None:
        raise ArgumentError(f"{names.type if kind is None else names.action} is required.")
    body = {"indicatorValue": validate_indicator_value(kind, fields["indicatorValue"], names.value),
            "indicatorType": kind, "action": action, "title": str(fields["title"]).strip(),
            "description": str(fields["description"]).strip()}
    if action in INDICATOR_ACTION_TYPES and kind not in INDICATOR_ACTION_TYPES[action]:
        raise ArgumentError(f"{names.action}={action} applies only to indicator types "
                            f"{', '.join(INDICATOR_ACTION_TYPES[action])}; {kind} indicators take "
                            f"{', '.join(a for a in INDICATOR_ACTIONS if kind in INDICATOR_ACTION_TYPES.get(a, (kind,)))}.")
    generate_alert = arg_to_bool(fields.get("generateAlert"), names.generate_alert, default=action == "Audit")
    if action == "Audit" and not generate_alert:
        raise ArgumentError(f"{names.generate_alert} must be true for {names.action}=Audit: an Audit indicator "
                            "only raises alerts.")
    body["generateAlert"] = generate_alert
    if fields.get("expirationTime") not in (None, ""):
        body["expirationTime"] = format_datetime(future_time(fields["expirationTime"], names.expiration, now))
    severity = arg_choice(fields.get("severity"), names.severity, INDICATOR_SEVERITIES)
    if severity:
        body["severity"] = severity
    educate_url = str(fields.get("educateUrl") or "").strip()
    if educate_url:
        if kind not in NETWORK_TYPES or action not in ("Block", "Warn"):
            raise ArgumentError(f"{names.educate_url} applies only to Block or Warn on IpAddress, DomainName or "
                                "Url indicators.")
        body["educateUrl"] = validate_url(educate_url, names.educate_url)
    for field_name in ("application", "recommendedActions", "externalID"):
        if str(fields.get(field_name) or "").strip():
            body[field_name] = str(fields[field_name]).strip()
    groups = arg_to_list(fields.get("rbacGroupNames"))
    if groups:
        body["rbacGroupNames"] = groups
    return body


# ---- indicators: results ------------------------------------------------------------------------


def indicator_standard_context(indicators: list[dict], *, scored: bool) -> dict:
    """The standard File/IP/Domain/URL context for each indicator's value, and (when scored) the DBotScore its
    action implies, as XSOAR's reputation conventions expect."""
    outputs: dict[str, list[dict]] = {}
    for indicator in indicators:
        kind, value = indicator.get("indicatorType"), indicator.get("indicatorValue")
        if kind not in STANDARD_CONTEXTS or not value:
            continue
        key, field_name, score_type = STANDARD_CONTEXTS[kind]
        outputs.setdefault(key, []).append({field_name: value})
        if scored and indicator.get("action") in ACTION_SCORES:
            outputs.setdefault(DBOT_SCORE_KEY, []).append({
                "Indicator": value, "Type": score_type, "Vendor": VENDOR,
                "Score": ACTION_SCORES[indicator["action"]]})
    return outputs


def indicators_result(indicators: list[dict], title: str, *, empty_note: str = "") -> CommandResult:
    result = entity_result(INDICATOR, indicators, title)
    result.outputs.update(indicator_standard_context(indicators, scored=True))
    if not indicators and empty_note:
        result.readable += f"\n\n{empty_note}"
    return result


def existing_indicator(client: "Client", kind: str, value: str) -> dict | None:
    odata = ODataFilter(INDICATOR_FILTER_FIELDS).eq("indicatorValue", value).eq("indicatorType", kind).build()
    return next(iter(client.list_indicators(odata_filter=odata, limit=1)), None)


def active_indicator_count(client: "Client", now: datetime) -> int:
    """Indicators this application can see that have not expired (what counts against the 15,000 cap)."""
    odata = ODataFilter(INDICATOR_FILTER_FIELDS).any_of(
        ODataFilter().compare("expirationTime", "gt", now), ODataFilter().verbatim("expirationTime eq null")).build()
    return sum(1 for _ in client.list_indicators(odata_filter=odata))


def cap_refusal_message(client: "Client", now: datetime) -> str:
    return (f"Microsoft refused to create the indicator: a tenant holds at most {MAX_ACTIVE_INDICATORS:,} active "
            f"indicators, and {active_indicator_count(client, now):,} active indicators are visible to this "
            "application. Delete indicators (!microsoft-atp-sc-indicator-delete) or let some expire, then try again.")


def submit_indicator(client: "Client", body: dict) -> tuple[dict, bool]:
    """Microsoft's submit-or-update; returns the indicator and whether it was created (it did not exist)."""
    existed = existing_indicator(client, body["indicatorType"], body["indicatorValue"]) is not None
    try:
        return client.submit_indicator(body), not existed
    except ApiError as exc:
        if exc.status == 400 and not existed and CAP_REFUSAL.search(str(exc)):
            raise IntegrationError(cap_refusal_message(client, client.clock.utcnow())) from exc
        raise


# ---- indicators: sc commands --------------------------------------------------------------------


def indicator_from_args(args: dict) -> dict:
    return {"indicatorValue": args.get("indicator_value"), "indicatorType": args.get("indicator_type"),
            "action": args.get("action"), "severity": args.get("severity"),
            "expirationTime": args.get("expiration_time") or "14 days", "title": args.get("indicator_title"),
            "description": args.get("indicator_description"), "application": args.get("indicator_application"),
            "recommendedActions": args.get("recommended_actions"), "rbacGroupNames": args.get("rbac_group_names"),
            "generateAlert": args.get("generate_alert"), "educateUrl": args.get("educate_url")}


def submit_indicator_command(client: "Client", args: dict) -> CommandResult:
    body = checked_indicator(indicator_from_args(args), SC_ARGUMENT_NAMES, client.clock.utcnow())
    indicator, created = submit_indicator(client, body)
    verb = "created" if created else "updated (an indicator with this type and value existed)"
    return indicators_result([indicator], f"Indicator {indicator.get('id', '')} {verb}")


@command("microsoft-atp-sc-indicator-create", TI_ROLES)
def sc_create_indicator_command(client: "Client", args: dict) -> CommandResult:
    return submit_indicator_command(client, args)


@command("microsoft-atp-sc-indicator-update", TI_ROLES)
def sc_update_indicator_command(client: "Client", args: dict) -> CommandResult:
    return submit_indicator_command(client, args)


@command("microsoft-atp-sc-indicator-list", TI_ROLES)
def sc_list_indicators_command(client: "Client", args: dict) -> CommandResult:
    paging = paging_args(args, zero_means_all=True)
    kind = arg_choice(args.get("indicator_type"), "indicator_type", INDICATOR_TYPES)
    odata = (ODataFilter(INDICATOR_FILTER_FIELDS).eq("indicatorValue", str(args.get("indicator_value") or "").strip())
             .eq("title", str(args.get("indicator_title") or "").strip()).eq("indicatorType", kind).build())
    indicators = list(client.list_indicators(odata_filter=odata, limit=paging.limit, offset=paging.offset))
    return indicators_result(indicators, "Indicators", empty_note=OWN_INDICATORS_NOTE)


@command("microsoft-atp-sc-indicator-get-by-id", TI_ROLES)
def sc_get_indicator_command(client: "Client", args: dict) -> CommandResult:
    indicator = client.get_indicator(validate_indicator_id(args.get("indicator_id")))
    return indicators_result([indicator], f"Indicator {indicator.get('id', '')}")


def delete_indicators(client: "Client", indicator_ids: list[str]) -> tuple[list[str], Failures]:
    """One ID: DELETE it. Several: BatchDelete in chunks of 500; Microsoft deletes none of a chunk when any ID is
    missing (404), so then the chunk is narrowed to the IDs that exist and sent again."""
    if len(indicator_ids) == 1:
        try:
            client.delete_indicator(indicator_ids[0])
        except ApiError as exc:
            return [], [(indicator_ids[0], str(exc))]
        return indicator_ids, []
    deleted: list[str] = []
    failed: Failures = []
    known: set[str] | None = None
    for start in range(0, len(indicator_ids), IMPORT_BATCH_SIZE):
        chunk = indicator_ids[start:start + IMPORT_BATCH_SIZE]
        try:
            client.batch_delete_indicators(chunk)
        except ApiError as exc:
            if exc.status != 404:
                failed += [(i, str(exc)) for i in chunk]
                continue
            known = known if known is not None else {str(i.get("id")) for i in client.list_indicators()}
            failed += [(i, "No such indicator (or it was created by another application and this one lacks "
                           "Ti.ReadWrite.All).") for i in chunk if i not in known]
            chunk = [i for i in chunk if i in known]
            if not chunk:
                continue
            try:
                client.batch_delete_indicators(chunk)
            except ApiError as retry_exc:
                failed += [(i, str(retry_exc)) for i in chunk]
                continue
        deleted += chunk
    return deleted, failed


@command("microsoft-atp-sc-indicator-delete", TI_ROLES)
def sc_delete_indicator_command(client: "Client", args: dict) -> CommandResult:
    ids, failed = [], []
    for value in arg_to_list(args.get("indicator_id")):
        try:
            ids.append(validate_indicator_id(value))
        except ArgumentError as exc:
            failed.append((value, str(exc)))
    if not ids and not failed:
        raise ArgumentError("indicator_id is required.")
    deleted, not_deleted = delete_indicators(client, list(dict.fromkeys(ids))) if ids else ([], [])
    failed += not_deleted
    if not deleted:
        raise IntegrationError("No indicator was deleted:\n" + "\n".join(f"- {i}: {e}" for i, e in failed))
    readable = markdown_table("Deleted indicators", [{"ID": i} for i in deleted]) + failures_readable(
        failed, "Indicator ID")
    return CommandResult(readable, raw={"deleted": deleted, "failed": [{"id": i, "error": e} for i, e in failed]})


# ---- indicators: batch import ---------------------------------------------------------------------


def batch_items(value: Any) -> list:
    """indicator_batch as a list: a list already, JSON text, or the entry ID (locally: the path) of a JSON file."""
    if isinstance(value, list):
        return value
    text = str(value or "").strip()
    if not text:
        raise ArgumentError("indicator_batch is required: a JSON list of indicators or a file entry ID.")
    if not text.startswith(("[", "{")):
        try:
            path = demisto.getFilePath(text)["path"]
            with open(path, encoding="utf-8-sig") as handle:
                text = handle.read()
        except Exception as exc:  # the platform raises its own error types for unknown entries
            raise ArgumentError(f"indicator_batch: '{value}' is neither a JSON list nor a readable file entry "
                                f"({exc}).") from None
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ArgumentError(f"indicator_batch is not valid JSON: {exc}.") from None
    if not isinstance(items, list):
        raise ArgumentError("indicator_batch must be a JSON list of indicator objects.")
    return items


class BatchItem:
    """One item of an indicator batch, checked first and then given its outcome."""

    __slots__ = ("position", "value", "body", "outcome")

    def __init__(self, position: int, value: str) -> None:
        self.position = position  # 1-based, as the user counts items
        self.value = value
        self.body: dict | None = None
        self.outcome: dict | None = None  # {"id", "indicator", "isFailed", "failureReason", "outcome"}

    def fail(self, reason: str) -> None:
        self.outcome = {"id": None, "indicator": self.value, "isFailed": True, "failureReason": reason,
                        "outcome": "Failed"}


def checked_batch(items: list, now: datetime) -> list[BatchItem]:
    """Every item checked like a single indicator; invalid ones and repeats of an earlier item fail here."""
    checked: list[BatchItem] = []
    first_seen: dict[tuple[str, str], int] = {}
    for position, item in enumerate(items, start=1):
        value = str(item.get("indicatorValue") or "") if isinstance(item, dict) else str(item)
        entry = BatchItem(position, value)
        checked.append(entry)
        try:
            if not isinstance(item, dict):
                raise ArgumentError("each item must be a JSON object with the Indicators API's fields.")
            unknown = sorted(set(item) - set(INDICATOR_ITEM_FIELDS))
            if unknown:
                raise ArgumentError(f"unknown field(s) {', '.join(unknown)}; fields are case-sensitive: "
                                    f"{', '.join(INDICATOR_ITEM_FIELDS)}.")
            entry.body = checked_indicator(item, IndicatorNames(), now)
        except ArgumentError as exc:
            entry.fail(f"item {position}: {exc}")
            continue
        key = indicator_key(entry.body["indicatorType"], entry.body["indicatorValue"])
        if key in first_seen:
            entry.body = None
            entry.fail(f"item {position} repeats item {first_seen[key]} (same type and value); it was sent once.")
        else:
            first_seen[key] = position
    return checked


class CallPacer:
    """Keeps calls under `per_minute` in any 60 seconds on the injected clock (Microsoft's import quota)."""

    def __init__(self, clock: Clock, per_minute: int):
        self.clock, self.per_minute = clock, per_minute
        self.calls: list[float] = []

    def wait_turn(self) -> None:
        now = self.clock.now()
        self.calls = [t for t in self.calls if t > now - 60]
        if len(self.calls) >= self.per_minute:
            delay = self.calls[0] + 60 - now
            log_debug(f"indicator import: pacing to {self.per_minute} calls a minute, waiting {delay:.0f}s")
            self.clock.sleep(delay)
        self.calls.append(self.clock.now())


def import_chunk(client: "Client", chunk: list[BatchItem], existing: set[tuple[str, str]]) -> None:
    """One import call; each item's outcome from Microsoft's per-item answer (a failed call fails its items)."""
    try:
        answers = client.import_indicators([item.body for item in chunk])
    except ApiError as exc:
        for item in chunk:
            item.fail(f"the import call for this item failed: {exc}")
        return
    by_value: dict[str, list[dict]] = {}
    for answer in answers:
        by_value.setdefault(str(answer.get("indicator") or "").lower(), []).append(answer)
    for item in chunk:
        matches = by_value.get(item.body["indicatorValue"].lower()) or []
        if not matches:
            item.fail("Microsoft's answer did not mention this indicator; check it with "
                      "!microsoft-atp-sc-indicator-list.")
            continue
        answer = matches.pop(0)
        if answer.get("isFailed"):
            item.fail(str(answer.get("failureReason") or "refused by Microsoft without a reason"))
            continue
        created = indicator_key(item.body["indicatorType"], item.body["indicatorValue"]) not in existing
        item.outcome = {"id": answer.get("id"), "indicator": item.value, "isFailed": False, "failureReason": None,
                        "outcome": "Created" if created else "Updated"}


def import_indicators(client: "Client", items: list[BatchItem]) -> int:
    """Sends the checked items in chunks of 500 at most 30 calls a minute; returns the number of calls."""
    ready = [item for item in items if item.body is not None]
    if not ready:
        return 0
    existing = {indicator_key(str(i.get("indicatorType")), str(i.get("indicatorValue")))
                for i in client.list_indicators()}
    pacer = CallPacer(client.clock, IMPORT_CALLS_PER_MINUTE)
    calls = 0
    for start in range(0, len(ready), IMPORT_BATCH_SIZE):
        pacer.wait_turn()
        import_chunk(client, ready[start:start + IMPORT_BATCH_SIZE], existing)
        calls += 1
    return calls


@command("microsoft-atp-indicator-batch-update", TI_ROLES)
def batch_update_indicators_command(client: "Client", args: dict) -> CommandResult:
    items = checked_batch(batch_items(args.get("indicator_batch")), client.clock.utcnow())
    if not items:
        raise ArgumentError("indicator_batch holds no indicators.")
    calls = import_indicators(client, items)
    outcomes = [item.outcome for item in items if item.outcome]
    counts = {name: sum(1 for o in outcomes if o["outcome"] == name) for name in ("Created", "Updated", "Failed")}
    summary = (f"{len(items)} indicators: {counts['Created']} created, {counts['Updated']} updated, "
               f"{counts['Failed']} failed ({calls} import call{'s' if calls != 1 else ''}).")
    if any(CAP_REFUSAL.search(str(o["failureReason"] or "")) for o in outcomes):
        summary += (f"\nSome were refused because a tenant holds at most {MAX_ACTIVE_INDICATORS:,} active "
                    f"indicators; {active_indicator_count(client, client.clock.utcnow()):,} are active and visible "
                    "to this application.")
    if not counts["Created"] and not counts["Updated"]:
        reasons = "\n".join(f"- {o['indicator']}: {o['failureReason']}" for o in outcomes[:TABLE_ROW_LIMIT])
        raise IntegrationError(f"No indicator was imported. {summary}\n{reasons}")
    failed = [o for o in outcomes if o["isFailed"]]
    result = entity_result(IMPORT_OUTCOME, failed + [o for o in outcomes if not o["isFailed"]], "Indicator import")
    result.readable = f"{summary}\n\n{result.readable}"
    return result


# ---- indicators: the older Graph tiIndicators commands, run on the Indicators API ------------------
# Microsoft removed Graph's tiIndicators in April 2026. These commands keep their arguments and context paths:
# each argument maps to its Indicators API field, arguments the Indicators API cannot express are refused, and the
# older context keys are filled from the Indicators API fields that have a counterpart.

LEGACY_ACTIONS = {"allow": ("Allowed", False), "block": ("Block", True), "alert": ("Audit", True)}
LEGACY_ACTION_NAMES = {"Allowed": "allow", "Audit": "alert", "Alert": "alert", "Block": "block",
                       "BlockAndRemediate": "block", "AlertAndBlock": "block", "Warn": "block"}
LEGACY_SEVERITIES = {"Informational": "Informational", "Low": "Low", "MediumLow": "Medium", "MediumHigh": "Medium",
                     "High": "High"}
LEGACY_THREAT_TYPES = ("Botnet", "C2", "CryptoMining", "Darknet", "DDoS", "MaliciousUrl", "Malware", "Phishing",
                       "Proxy", "PUA", "WatchList")
LEGACY_HASH_TYPES = {"sha1": "FileSha1", "sha256": "FileSha256", "md5": "FileMd5"}
HASH_LENGTH_TYPES = {40: "FileSha1", 64: "FileSha256", 32: "FileMd5"}
LEGACY_NETWORK_VALUES = (("domain_name", "DomainName"), ("url", "Url"), ("network_ipv4", "IpAddress"),
                         ("network_ipv6", "IpAddress"), ("network_destination_ipv4", "IpAddress"),
                         ("network_destination_ipv6", "IpAddress"))
_NO_CIDR = "the Indicators API has no CIDR blocks; give single addresses (network_ipv4 or network_ipv6)"
_ALL_PORTS = "Indicators API indicators apply to every port and protocol"
_REMOTE_ONLY = ("Indicators API IP indicators match the remote address of a connection; give it as network_ipv4, "
                "network_ipv6 or a network_destination_* argument")
LEGACY_REFUSED = {
    "network_cidr_block": _NO_CIDR, "network_destination_cidr_block": _NO_CIDR, "network_source_cidr_block": _NO_CIDR,
    "network_destination_asn": "the Indicators API cannot match autonomous system numbers",
    "network_source_asn": "the Indicators API cannot match autonomous system numbers",
    "network_port": _ALL_PORTS, "network_destination_port": _ALL_PORTS, "network_source_port": _ALL_PORTS,
    "network_protocol": _ALL_PORTS, "network_source_ipv4": _REMOTE_ONLY, "network_source_ipv6": _REMOTE_ONLY,
    "user_agent": "the Indicators API cannot match user agents",
    "file_mutex_name": "the Indicators API cannot match mutex names",
}
LEGACY_NOT_KEPT = ("tlp_level", "confidence", "tags", "file_packer", "file_compile_date_time",
                   "file_created_date_time", "file_name", "file_size", "file_type", "file_path")
LEGACY_INDICATOR = EntitySpec({
    "id": "id", "description": "description", "expirationTime": "expirationDateTime", "externalID": "externalId",
    "creationTimeDateTimeUtc": "ingestedDateTime", "lastUpdateTime": "lastReportedDateTime", "severity": "severity",
}, path="Indicators", key=("id",), headers=("id", "action", "fileHashValue", "domainName", "url", "networkIPv4",
                                            "networkIPv6", "severity", "expirationDateTime", "description"))


def legacy_fields(indicator: dict, now: datetime) -> dict:
    """The older context keys that have an Indicators API counterpart."""
    kind, value, action = indicator.get("indicatorType"), indicator.get("indicatorValue"), indicator.get("action")
    fields: dict[str, Any] = {"action": LEGACY_ACTION_NAMES.get(str(action), "unknown"),
                              "passiveOnly": action in ("Audit", "Alert"), "targetProduct": "Microsoft Defender ATP"}
    try:
        expires = indicator.get("expirationTime")
        fields["isActive"] = not expires or parse_iso_datetime(str(expires)) > now
    except ValueError:
        pass
    if kind in ("FileSha1", "FileSha256", "FileMd5"):
        fields.update(fileHashType=kind[4:].lower(), fileHashValue=value)
    elif kind == "DomainName":
        fields["domainName"] = value
    elif kind == "Url":
        fields["url"] = value
    elif kind == "IpAddress":
        fields["networkIPv6" if ":" in str(value) else "networkIPv4"] = value
    return fields


def legacy_result(indicators: list[dict], title: str, now: datetime, *, file_details: dict | None = None,
                  note: str = "") -> CommandResult:
    result = entity_result(LEGACY_INDICATOR, indicators, title, extra=lambda record: legacy_fields(record, now))
    standard = indicator_standard_context(indicators, scored=False)
    if file_details and FILE_CONTEXT_KEY in standard:
        details = {k: v for k, v in file_details.items() if v not in (None, "")}
        standard[FILE_CONTEXT_KEY] = [{**entry, **details} for entry in standard[FILE_CONTEXT_KEY]]
    result.outputs.update(standard)
    if note:
        result.readable += f"\n\n{note}"
    return result


def legacy_submission(args: dict, now: datetime) -> dict:
    """The fields every older create command shares, mapped to the Indicators API; refused arguments fail here."""
    for name, why in LEGACY_REFUSED.items():
        if str(args.get(name) or "").strip():
            raise ArgumentError(f"{name} cannot be used any more: {why}. Leave {name} empty.")
    action = arg_choice(args.get("action"), "action", ("unknown", *LEGACY_ACTIONS))
    if action in (None, "unknown"):
        raise ArgumentError("action must be allow, block or alert (the Indicators API has no 'unknown' action).")
    threat_type = arg_choice(args.get("threat_type"), "threat_type", LEGACY_THREAT_TYPES)
    if threat_type is None:
        raise ArgumentError(f"threat_type is required: one of {', '.join(LEGACY_THREAT_TYPES)}.")
    arg_to_int(args.get("confidence"), "confidence", minimum=0, maximum=100)
    severity = arg_choice(args.get("severity"), "severity", LEGACY_SEVERITIES, default="MediumHigh")
    api_action, generate_alert = LEGACY_ACTIONS[action]
    return {"action": api_action, "generateAlert": generate_alert, "title": f"{threat_type} indicator",
            "description": arg_required(args, "description"), "severity": LEGACY_SEVERITIES[str(severity)],
            "expirationTime": arg_required(args, "expiration_time")}


def legacy_names(value_argument: str, type_argument: str = "") -> IndicatorNames:
    return IndicatorNames(value=value_argument, type=type_argument or value_argument, action="action",
                          severity="severity", expiration="expiration_time", generate_alert="action",
                          title="threat_type", description="description")


def legacy_not_kept_note(args: dict) -> str:
    given = [name for name in LEGACY_NOT_KEPT if str(args.get(name) or "").strip()]
    return f"Not kept by the Indicators API (accepted, not stored): {', '.join(given)}." if given else ""


def legacy_hash_type(args: dict, value: str) -> str:
    named = str(args.get("file_hash_type") or "").strip()
    if named and named.lower() != "unknown":
        kind = LEGACY_HASH_TYPES.get(named.lower())
        if kind is None:
            raise ArgumentError(f"file_hash_type={named} cannot be blocked by the Indicators API; use sha1, sha256 or "
                                "md5.")
        return kind
    kind = HASH_LENGTH_TYPES.get(len(value))
    if kind is None:
        raise ArgumentError(f"file_hash_value must be a SHA-1, SHA-256 or MD5 hash (got '{value}').")
    return kind


@command("microsoft-atp-indicator-list", TI_ROLES)
def legacy_list_indicators_command(client: "Client", args: dict) -> CommandResult:
    limit = arg_to_int(args.get("limit"), "limit", default=50, minimum=1)
    page_size = arg_to_int(args.get("page_size"), "page_size", default=50, minimum=1, maximum=MAX_PAGE_SIZE)
    indicators = list(client.list_indicators(limit=limit, page_size=int(page_size)))
    return legacy_result(indicators, "Indicators", client.clock.utcnow(),
                         note="" if indicators else OWN_INDICATORS_NOTE)


@command("microsoft-atp-indicator-get-by-id", TI_ROLES)
def legacy_get_indicator_command(client: "Client", args: dict) -> CommandResult:
    indicator = client.get_indicator(validate_indicator_id(args.get("indicator_id")))
    return legacy_result([indicator], f"Indicator {indicator.get('id', '')}", client.clock.utcnow())


@command("microsoft-atp-indicator-create-file", TI_ROLES)
def legacy_create_file_indicator_command(client: "Client", args: dict) -> CommandResult:
    now = client.clock.utcnow()
    fields = legacy_submission(args, now)
    value = arg_required(args, "file_hash_value")
    size = arg_to_int(args.get("file_size"), "file_size", minimum=0)
    fields.update(indicatorValue=value, indicatorType=legacy_hash_type(args, value))
    indicator, created = submit_indicator(client, checked_indicator(fields, legacy_names("file_hash_value",
                                                                                         "file_hash_type"), now))
    details = {"Name": args.get("file_name"), "Size": size, "Type": args.get("file_type"), "Path": args.get("file_path")}
    return legacy_result([indicator], f"File indicator {indicator.get('id', '')} {'created' if created else 'updated'}",
                         now, file_details=details, note=legacy_not_kept_note(args))


@command("microsoft-atp-indicator-create-network", TI_ROLES)
def legacy_create_network_indicator_command(client: "Client", args: dict) -> CommandResult:
    now = client.clock.utcnow()
    fields = legacy_submission(args, now)
    bodies = {f"{name}={str(args[name]).strip()}": checked_indicator(
        {**fields, "indicatorValue": str(args[name]).strip(), "indicatorType": kind}, legacy_names(name), now)
        for name, kind in LEGACY_NETWORK_VALUES if str(args.get(name) or "").strip()}
    if not bodies:
        raise ArgumentError("Give at least one of " + ", ".join(name for name, _ in LEGACY_NETWORK_VALUES) + ".")
    done, failed = call_for_each(list(bodies), lambda label: submit_indicator(client, bodies[label])[0],
                                 "Creating the network indicators")
    note = "\n\n".join(text for text in (legacy_not_kept_note(args), failures_readable(failed, "Argument").strip())
                       if text)
    return legacy_result([indicator for _, indicator in done], "Network indicators created or updated", now,
                         note=note)


def legacy_resubmission(current: dict, changes: dict) -> dict:
    """The stored indicator as a submit body (Microsoft has no PATCH for indicators), with `changes` applied;
    the retired Alert and AlertAndBlock actions become Audit and Block with alerting."""
    action = {"Alert": "Audit", "AlertAndBlock": "Block"}.get(str(current.get("action")), current.get("action"))
    body = {name: current[name] for name in INDICATOR_ITEM_FIELDS if current.get(name) not in (None, "", [])}
    body.pop("application", None)  # Microsoft keeps it only on creation
    body.update(action=action, **changes)
    if current.get("action") in ("Alert", "AlertAndBlock"):
        body["generateAlert"] = True
    return body


@command("microsoft-atp-indicator-update", TI_ROLES)
def legacy_update_indicator_command(client: "Client", args: dict) -> CommandResult:
    now = client.clock.utcnow()
    indicator_id = validate_indicator_id(args.get("indicator_id"))
    changes = {"expirationTime": format_datetime(future_time(arg_required(args, "expiration_time"),
                                                             "expiration_time", now)),
               "severity": LEGACY_SEVERITIES[str(arg_choice(args.get("severity"), "severity", LEGACY_SEVERITIES,
                                                            default="MediumHigh"))]}
    if str(args.get("description") or "").strip():
        changes["description"] = str(args["description"]).strip()
    indicator = client.submit_indicator(legacy_resubmission(client.get_indicator(indicator_id), changes))
    return legacy_result([indicator], f"Indicator {indicator.get('id', indicator_id)} updated", now)


@command("microsoft-atp-indicator-delete", TI_ROLES)
def legacy_delete_indicator_command(client: "Client", args: dict) -> CommandResult:
    indicator_id = validate_indicator_id(args.get("indicator_id"))
    client.delete_indicator(indicator_id)
    return CommandResult(f"Indicator {indicator_id} deleted.", raw={"deleted": [indicator_id]})


# ============================================================================================
# 6.9 Live response
# ============================================================================================


LIVE_RESPONSE_ROLES = ("Machine.LiveResponse",)
LIBRARY_ROLES = ("Library.Manage",)
MAX_LIBRARY_FILE_BYTES = 20 * 1024 * 1024  # Microsoft's limit for a library file
MAX_DEVICE_PATH = 1024  # characters; Windows long paths can be longer, but a live response path this long is a mistake
MAX_FILE_NAME = 255
MAX_SCRIPT_ARGUMENTS = 2048
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
UNSAFE_NAME_CHARACTERS = re.compile(r"[\\/:*?\"<>|%#]")
GZIP_MAGIC, ZIP_MAGIC = b"\x1f\x8b", b"PK\x03\x04"
SCRIPT_OUTPUT_SHOWN = 10_000  # characters of script output in the War Room; context holds all of it
LIVE_RESPONSE_FIELDS = (
    "id", "type", "title", "requestor", "requestorComment", "status", "machineId", "computerDnsName",
    "creationDateTimeUtc", "lastUpdateDateTimeUtc", "cancellationRequestor", "cancellationComment",
    "cancellationDateTimeUtc", "errorHResult", "scope", "externalId", "requestSource", "relatedFileInfo", "commands",
    "troubleshootInfo")
TRANSCRIPT_FIELDS = ("script_name", "exit_code", "script_output", "script_errors")


# The older integration passed live response actions through in Microsoft's camelCase; playbooks read them so.
LIVE_RESPONSE_ACTION = EntitySpec({name: name for name in LIVE_RESPONSE_FIELDS + TRANSCRIPT_FIELDS},
                                  path="LiveResponseAction", key=("id",),
                                  headers=("id", "status", "machineId", "computerDnsName", "creationDateTimeUtc"))
LIBRARY_FILE = EntitySpec({
    "fileName": "FileName", "sha256": "Sha256", "description": "Description", "creationTime": "CreationTime",
    "lastUpdatedTime": "LastUpdatedTime", "createdBy": "CreatedBy", "hasParameters": "HasParameters",
    "parametersDescription": "ParametersDescription",
}, path="LibraryFile", key=("FileName",))


class LiveResponseApi:
    """Defender API calls of the live response and its library area (mixed into Client)."""

    def run_live_response(self, machine_id: str, comment: str, commands: list[dict]) -> dict:
        return self.request("POST", f"machines/{machine_id}/runliveresponse",
                            json_body={"Commands": commands, "Comment": comment})

    def get_machine_action(self, action_id: str) -> dict:
        return self.request("GET", f"machineactions/{action_id}") or {}

    def get_live_response_result_link(self, action_id: str, index: int) -> str:
        body = self.request("GET", f"machineactions/{action_id}/GetLiveResponseResultDownloadLink(index={index})")
        link = str((body or {}).get("value") or "").strip().strip('"')
        if not link:
            raise ApiError(f"Microsoft returned no download link for command {index} of live response session "
                           f"{action_id}.")
        return link

    def list_library_files(self) -> list[dict]:
        return self.get_values("libraryfiles")

    def upload_library_file(self, file_name: str, content: bytes, *, description: str | None,
                            parameters_description: str | None, override: bool) -> dict:
        form = {"Description": description, "ParametersDescription": parameters_description,
                "HasParameters": "true" if parameters_description else "false",
                "OverrideIfExists": "true" if override else "false"}
        return self.request("POST", "libraryfiles", files={
            "File": (file_name, content, "application/octet-stream"),
            **{name: (None, value) for name, value in form.items() if value is not None}}) or {}

    def delete_library_file(self, file_name: str) -> None:
        self.request("DELETE", f"libraryfiles/{segment(file_name, 'file_name')}", expect=None)


def validate_library_name(value: str, name: str) -> str:
    """A live response library file name: it is one URL path segment and names a file, never a path."""
    text = str(value or "").strip()
    if not text or text in (".", "..") or len(text) > MAX_FILE_NAME or UNSAFE_NAME_CHARACTERS.search(text) \
            or CONTROL_CHARACTERS.search(text):
        raise ArgumentError(f"{name} must be the name of a file in the live response library, e.g. collect.ps1: "
                            f"1 to {MAX_FILE_NAME} characters, no path and none of \\ / : * ? \" < > | % # "
                            f"(got '{value}'). See !microsoft-atp-list-library-files.")
    return text


def validate_device_path(value: str, name: str = "path") -> str:
    text = str(value or "").strip()
    if not text or len(text) > MAX_DEVICE_PATH or CONTROL_CHARACTERS.search(text):
        raise ArgumentError(f"{name} must be the full path of a file on the machine, e.g. "
                            f"C:\\Windows\\Temp\\file.txt, at most {MAX_DEVICE_PATH} characters (got '{value}').")
    return text


def script_arguments(args: dict) -> str:
    text = str(args.get("arguments") or "").strip()
    if len(text) > MAX_SCRIPT_ARGUMENTS or CONTROL_CHARACTERS.search(text):
        raise ArgumentError(f"arguments must be one line of at most {MAX_SCRIPT_ARGUMENTS} characters.")
    return text


def live_response_command(kind: str, **params: str) -> dict:
    """One command of a runliveresponse body, with Microsoft's (case-sensitive) parameter keys."""
    return {"type": kind, "params": [{"key": key, "value": value} for key, value in params.items() if value]}


def describe_command(command_record: dict) -> str:
    """`RunScript collect.ps1 -Full` for a command as Microsoft returns or receives it."""
    command_body = command_record.get("command", command_record) or {}
    values = [str(param.get("value")) for param in command_body.get("params") or []]
    return " ".join([str(command_body.get("type")), *values])


def same_commands(action: dict, commands: list[dict]) -> bool:
    asked = [describe_command(command_body) for command_body in commands]
    return [describe_command(record) for record in action.get("commands") or []] == asked


def busy_device_error(action: dict) -> IntegrationError:
    action_id = action.get("id")
    running = "; ".join(describe_command(record) for record in action.get("commands") or []) or "unknown commands"
    return IntegrationError(
        f"Machine {action.get('computerDnsName') or action.get('machineId')} already has an active live response "
        f"session {action_id} ({action.get('status')}, requested by {action.get('requestor')} at "
        f"{action.get('creationDateTimeUtc')}) running: {running}. Microsoft allows one session per device, so no "
        f"new session was started. Wait for it with !microsoft-atp-list-machine-actions-details id={action_id} "
        f"(then read its results with !microsoft-atp-live-response-result machine_action_id={action_id} "
        f"command_index=0), or cancel it with !microsoft-atp-live-response-cancel-action "
        f"machine_action_id={action_id} comment=<why>.")


def session_creator(client: "Client", action_command: ActionCommand, comment: str,
                    commands: list[dict]) -> Callable[[ActionTarget], dict]:
    """Starts the session. When the device is busy with a session running the same commands, the polling machinery
    follows that one (it re-raises Microsoft's error); a session running anything else is reported, not joined."""
    def create(target: ActionTarget) -> dict:
        try:
            return client.run_live_response(target.machine_id, comment, commands)
        except ApiError as exc:
            if not is_already_pending(exc):
                raise
            pending = find_pending_action(client, action_command, target)
            if pending is None or same_commands(pending, commands):
                raise
            raise busy_device_error(pending) from exc
    return create


def session_failure(action: dict) -> IntegrationError:
    """Why a session did not succeed, with Microsoft's errors per command and the commands skipped after them."""
    lines, failed = [], False
    for record in action.get("commands") or []:
        status = record.get("commandStatus")
        what = f"command {record.get('index')} ({describe_command(record)})"
        if status == "Failed":
            failed = True
            lines.append(f"- {what} failed: {'; '.join(map(str, record.get('errors') or [])) or 'no error detail'}")
        elif status != "Completed":
            lines.append(f"- {what} was skipped because an earlier command failed" if failed
                         else f"- {what} did not run ({status})")
    status = action.get("status")
    if status == "Cancelled":
        lines.insert(0, f"Cancelled by {action.get('cancellationRequestor')}: {action.get('cancellationComment')}")
    detail = "\n".join(lines)
    return IntegrationError(f"Live response session {action.get('id')} on "
                            f"{action.get('computerDnsName') or action.get('machineId')} ended with status {status}"
                            f" (errorHResult {action.get('errorHResult')}):\n{detail}")


def finished_session(client: "Client", outcomes: list[ActionOutcome]) -> dict:
    """The session with its commands (re-read when the status list left them out); raises unless it succeeded."""
    action = next(outcome.action for outcome in outcomes if outcome.action)
    if not action.get("commands"):
        action = client.get_machine_action(str(action.get("id")))
    if action.get("status") != "Succeeded":
        raise session_failure(action)
    return action


def command_index(action: dict, kind: str) -> int:
    return next((int(record.get("index", i)) for i, record in enumerate(action.get("commands") or [])
                 if (record.get("command") or {}).get("type") == kind), 0)


def download_name(device_path: str, data: bytes) -> str:
    """The collected file's own name, with the extension of the container Microsoft wrapped it in."""
    name = re.split(r"[\\/]", device_path)[-1] or "live_response_file"
    if data.startswith(GZIP_MAGIC) and not name.lower().endswith(".gz"):
        return f"{name}.gz"
    if data.startswith(ZIP_MAGIC) and not name.lower().endswith(".zip"):
        return f"{name}.zip"
    return name


def read_transcript(data: bytes, action_id: str) -> dict:
    try:
        transcript = json.loads(data)
    except ValueError:
        transcript = None
    if not isinstance(transcript, dict):
        raise ApiError(f"The RunScript result of live response session {action_id} is not the JSON transcript "
                       "Microsoft documents (script_name, exit_code, script_output, script_errors).")
    return {name: transcript.get(name) for name in TRANSCRIPT_FIELDS}


def transcript_readable(transcript: dict, host: str) -> str:
    def block(title: str, text: Any) -> str:
        text = str(text or "")
        shown = text[:SCRIPT_OUTPUT_SHOWN]
        more = f"\n({len(text) - len(shown)} more characters in context)" if len(text) > len(shown) else ""
        return f"#### {title}\n```\n{shown}\n```{more}" if text else f"#### {title}\n(none)"
    return (f"### Script {transcript['script_name']} on {host}: exit code {transcript['exit_code']}\n"
            f"{block('Output', transcript['script_output'])}\n{block('Errors', transcript['script_errors'])}")


def with_transcript(result: CommandResult, action: dict, transcript: dict, readable: str) -> CommandResult:
    """The session's context row (PreExisting kept) with the script's transcript merged in."""
    key = LIVE_RESPONSE_ACTION.context_key()
    row = (result.outputs.get(key) or [{}])[-1]
    result.outputs = {key: [{**row, **to_context({**action, **transcript}, LIVE_RESPONSE_ACTION)}]}
    result.readable = readable
    result.raw = {**action, **transcript}
    return result


def run_session(client: "Client", args: dict, action_command: ActionCommand, commands: list[dict],
                deliver: Callable[["Client", list[ActionOutcome], CommandResult], list]) -> Any:
    """Starts (or resumes following) a one-command session on one machine with the machine actions' polling, and
    hands the finished session to `deliver`."""
    targets = [ActionTarget(validate_machine_id(arg_required(args, "machine_id")))]
    comment = arg_required(args, "comment")
    return run_machine_action(client, args, action_command, targets,
                              session_creator(client, action_command, comment, commands), on_done=deliver)


def session_command(name: str) -> ActionCommand:
    return ActionCommand(name, "LiveResponse", ids_arg="machine_action_id", spec=LIVE_RESPONSE_ACTION)


PUT_FILE = session_command("microsoft-atp-live-response-put-file")
RUN_SCRIPT = session_command("microsoft-atp-live-response-run-script")
GET_FILE = session_command("microsoft-atp-live-response-get-file")


@command("microsoft-atp-live-response-put-file", LIVE_RESPONSE_ROLES)
def live_response_put_file_command(client: "Client", args: dict) -> Any:
    file_name = validate_library_name(arg_required(args, "file_name"), "file_name")

    def deliver(client: "Client", outcomes: list[ActionOutcome], result: CommandResult) -> list:
        action = finished_session(client, outcomes)
        result.readable += (f"\n\n{file_name} is on {action.get('computerDnsName')}, in the Downloads folder of "
                            "Defender for Endpoint.")
        return [result]
    return run_session(client, args, PUT_FILE, [live_response_command("PutFile", FileName=file_name)], deliver)


@command("microsoft-atp-live-response-run-script", LIVE_RESPONSE_ROLES)
def live_response_run_script_command(client: "Client", args: dict) -> Any:
    script = validate_library_name(arg_required(args, "scriptName"), "scriptName")
    commands = [live_response_command("RunScript", ScriptName=script, Args=script_arguments(args))]

    def deliver(client: "Client", outcomes: list[ActionOutcome], result: CommandResult) -> list:
        action = finished_session(client, outcomes)
        link = client.get_live_response_result_link(str(action["id"]), command_index(action, "RunScript"))
        transcript = read_transcript(client.download(link), str(action["id"]))
        readable = f"{result.readable}\n\n{transcript_readable(transcript, str(action.get('computerDnsName')))}"
        return [with_transcript(result, action, transcript, readable)]
    return run_session(client, args, RUN_SCRIPT, commands, deliver)


@command("microsoft-atp-live-response-get-file", LIVE_RESPONSE_ROLES)
def live_response_get_file_command(client: "Client", args: dict) -> Any:
    path = validate_device_path(arg_required(args, "path"))

    def deliver(client: "Client", outcomes: list[ActionOutcome], result: CommandResult) -> list:
        action = finished_session(client, outcomes)
        data = client.download(client.get_live_response_result_link(str(action["id"]),
                                                                     command_index(action, "GetFile")))
        return [result, file_entry(download_name(path, data), data)]
    return run_session(client, args, GET_FILE, [live_response_command("GetFile", Path=path)], deliver)


@command("microsoft-atp-live-response-result", MACHINE_READ)
def live_response_result_command(client: "Client", args: dict) -> Any:
    action_id = validate_action_id(arg_required(args, "machine_action_id"), "machine_action_id")
    index = arg_to_int(arg_required(args, "command_index"), "command_index", minimum=0)
    action = client.get_machine_action(action_id)
    commands = action.get("commands") or []
    if action.get("type") != "LiveResponse" or index >= len(commands):
        raise ArgumentError(f"command_index {index} does not name a command of live response session {action_id}: "
                            f"it is a {action.get('type')} action with {len(commands)} command(s), numbered from 0.")
    record = commands[index]
    if record.get("commandStatus") != "Completed":
        raise IntegrationError(f"Command {index} ({describe_command(record)}) of live response session {action_id} "
                               f"has no result: its status is {record.get('commandStatus')}"
                               f"{' (' + '; '.join(map(str, record['errors'])) + ')' if record.get('errors') else ''}"
                               f", and the session's is {action.get('status')}.")
    data = client.download(client.get_live_response_result_link(action_id, index))
    kind = (record.get("command") or {}).get("type")
    result = entity_result(LIVE_RESPONSE_ACTION, action, f"Live response session {action_id}")
    if kind == "RunScript":
        transcript = read_transcript(data, action_id)
        return with_transcript(result, action, transcript,
                               transcript_readable(transcript, str(action.get("computerDnsName"))))
    values = [str(p.get("value")) for p in (record.get("command") or {}).get("params") or []]
    return [result, file_entry(download_name(values[0] if values else f"{action_id}_{index}", data), data)]


@command("microsoft-atp-live-response-cancel-action", LIVE_RESPONSE_ROLES)
def live_response_cancel_action_command(client: "Client", args: dict) -> CommandResult:
    action_id = validate_action_id(arg_required(args, "machine_action_id"), "machine_action_id")
    action = client.cancel_machine_action(action_id, arg_required(args, "comment"))
    return CommandResult(f"### Live response session {action_id}\nCancellation requested; the session's status is "
                         f"now {action.get('status')}.", raw=action)


@command("microsoft-atp-list-library-files", LIBRARY_ROLES)
def list_library_files_command(client: "Client", args: dict) -> CommandResult:
    paging = paging_args(args)
    files = client.list_library_files()
    end = None if paging.limit is None else paging.offset + paging.limit
    return entity_result(LIBRARY_FILE, files[paging.offset:end], "Live response library")


def library_upload_source(entry_id: str) -> tuple[str, str]:
    """(local path, file name) of a War Room file entry; in the CLI the entry id is a local path."""
    try:
        found = demisto.getFilePath(entry_id)
    except Exception as exc:  # the platform raises its own error types for unknown entries
        raise ArgumentError(f"entry_id '{entry_id}' is not a file entry (in the mde CLI: a readable local file): "
                            f"{exc}") from None
    path = str((found or {}).get("path") or "")
    if not path or not os.path.isfile(path):
        raise ArgumentError(f"entry_id '{entry_id}' does not lead to a readable file.")
    return path, str(found.get("name") or os.path.basename(path))


@command("microsoft-atp-upload-library-file", LIBRARY_ROLES)
def upload_library_file_command(client: "Client", args: dict) -> CommandResult:
    path, name = library_upload_source(arg_required(args, "entry_id"))
    file_name = validate_library_name(name, "the file's name")
    size = os.path.getsize(path)
    if size > MAX_LIBRARY_FILE_BYTES:
        raise ArgumentError(f"{file_name} is {size:,} bytes; the live response library takes files up to 20 MB "
                            f"({MAX_LIBRARY_FILE_BYTES:,} bytes).")
    with open(path, "rb") as handle:
        content = handle.read()
    override = arg_to_bool(args.get("override_if_exists"), "override_if_exists")
    try:
        record = client.upload_library_file(
            file_name, content, description=str(args.get("description") or "").strip() or None,
            parameters_description=str(args.get("parameters_description") or "").strip() or None, override=override)
    except ApiError as exc:
        if exc.status == 400 and not override and "exist" in str(exc).lower():
            raise IntegrationError(f"{exc}\nTo replace the library's {file_name}, run the command again with "
                                   "override_if_exists=true.") from None
        raise
    return entity_result(LIBRARY_FILE, record or {"fileName": file_name}, f"Uploaded {file_name} to the live "
                                                                          "response library")


@command("microsoft-atp-delete-library-file", LIBRARY_ROLES)
def delete_library_file_command(client: "Client", args: dict) -> CommandResult:
    file_name = validate_library_name(arg_required(args, "file_name"), "file_name")
    client.delete_library_file(file_name)
    return CommandResult(f"Deleted {file_name} from the live response library.")


# ============================================================================================
# 6.10 Reputation
# ============================================================================================


FILE_READ = ("File.Read.All",)
MAX_LOOK_BACK_HOURS = 720  # Microsoft's limit (30 days), also its default
DBOT_UNKNOWN, DBOT_GOOD, DBOT_BAD = 0, 1, 3
DEFAULT_RELIABILITY = "B - Usually reliable"  # the Source Reliability parameter's default in the yml
UNKNOWN_FILE_NOTE = "not known to Microsoft Defender for Endpoint"
MD5_NOTE = "Microsoft Defender for Endpoint cannot look files up by MD5; use the SHA-1 or SHA-256"
# The platform's standard merge rules for File and DBotScore.
STANDARD_FILE_KEY = ("File(val.MD5 && val.MD5 == obj.MD5 || val.SHA1 && val.SHA1 == obj.SHA1 || val.SHA256 && "
                     "val.SHA256 == obj.SHA256 || val.SHA512 && val.SHA512 == obj.SHA512 || val.CRC32 && "
                     "val.CRC32 == obj.CRC32 || val.CTPH && val.CTPH == obj.CTPH || val.SSDeep && "
                     "val.SSDeep == obj.SSDeep)")
DBOT_SCORE_KEY = context_key("DBotScore", "Indicator", "Vendor", "Type")

FILE = ALERT_FILE.extend(path="File", key=("Sha1",), fields={**ALERT_FILE.fields, "md5": "MD5"},
                         headers=("Sha1", "Sha256", "DeterminationType", "DeterminationValue", "Signer", "Size",
                                  "FileType", "GlobalPrevalence"))
STANDARD_FILE = EntitySpec({
    "sha1": "SHA1", "sha256": "SHA256", "md5": "MD5", "size": "Size", "fileType": "Type", "filePublisher": "Company",
    "fileProductName": "ProductName",
}, derived=lambda record: {"DigitalSignature": {"Publisher": record["signer"]}} if record.get("signer") else {})
FILE_PREVALENCE = EntitySpec({
    "organizationPrevalence": "OrgPrevalence", "orgFirstSeen": "OrgFirstSeen", "orgLastSeen": "OrgLastSeen",
    "globalPrevalence": "GlobalPrevalence", "globallyPrevalence": "GloballyPrevalence",
    "globalFirstObserved": "GlobalFirstObserved", "globalLastObserved": "GlobalLastObserved",
    "topFileNames": "TopFileNames",
    # Both spellings stay in context: playbooks read OrganizationPrevalence and GlobalPrevalence too.
}, derived=lambda stats: {"OrganizationPrevalence": stats.get("organizationPrevalence"),
                          "GlobalPrevalence": stats.get("globalPrevalence", stats.get("globallyPrevalence")),
                          "GloballyPrevalence": stats.get("globallyPrevalence", stats.get("globalPrevalence"))})
FILE_STATISTICS = EntitySpec({"sha1": "Sha1"}, path="FileStatistics", key=("Sha1",),
                             derived=lambda stats: {"Statistics": to_context(stats, FILE_PREVALENCE)})
STANDARD_FILE_PREVALENCE = EntitySpec({
    "sha1": "SHA1", "organizationPrevalence": "OrganizationPrevalence", "globalPrevalence": "GlobalPrevalence",
    "globallyPrevalence": "GlobalPrevalence", "orgFirstSeen": "OrganizationFirstSeen",
    "orgLastSeen": "OrganizationLastSeen", "globalFirstObserved": "FirstSeenBySource",
    "globalLastObserved": "LastSeenBySource",
})
IP_PREVALENCE = EntitySpec({"ipAddress": "IPAddress", "organizationPrevalence": "OrgPrevalence",
                            "orgFirstSeen": "OrgFirstSeen", "orgLastSeen": "OrgLastSeen"},
                           path="IPStatistics.Statistics", key=("IPAddress",))
DOMAIN_PREVALENCE = EntitySpec({"host": "Host", "organizationPrevalence": "OrgPrevalence",
                                "orgFirstSeen": "OrgFirstSeen", "orgLastSeen": "OrgLastSeen"},
                               path="DomainStatistics.Statistics", key=("Host",))


class ReputationApi:
    """Defender API calls of the file, IP and domain reputation and statistics area (mixed into Client)."""

    def get_file(self, file_hash: str) -> dict:
        return self.request("GET", f"files/{file_hash}") or {}

    def get_file_statistics(self, file_hash: str, look_back: dict) -> dict:
        return self.request("GET", f"files/{file_hash}/stats", params=look_back) or {}

    def get_ip_statistics(self, ip: str, look_back: dict) -> dict:
        return self.request("GET", f"ips/{segment(ip, 'ip')}/stats", params=look_back) or {}

    def get_domain_statistics(self, domain: str, look_back: dict) -> dict:
        return self.request("GET", f"domains/{segment(domain, 'domain')}/stats", params=look_back) or {}


def validate_file_hash(value: str, name: str) -> str:
    if not (SHA1.match(value) or SHA256.match(value) or MD5.match(value)):
        raise ArgumentError(f"{name} must be file hashes: SHA-1 (40), SHA-256 (64) or MD5 (32) hexadecimal "
                            f"characters (got '{value}').")
    return value.lower()


def file_hashes_arg(args: dict, name: str) -> list[str]:
    hashes = list(dict.fromkeys(validate_file_hash(value, name) for value in arg_to_list(args.get(name))))
    if not hashes:
        raise ArgumentError(f"{name} is required: one or more file hashes, comma-separated.")
    return hashes


def hash_kind(file_hash: str) -> str:
    return {40: "SHA1", 64: "SHA256", 32: "MD5"}[len(file_hash)]


def look_back_arg(args: dict) -> dict:
    hours = arg_to_int(args.get("lookBackHours"), "lookBackHours", minimum=1, maximum=MAX_LOOK_BACK_HOURS)
    return {} if hours is None else {"lookBackHours": hours}


def verdict_score(determination: Any) -> int:
    verdict = str(determination or "").strip().lower()
    if verdict == "clean":
        return DBOT_GOOD
    return DBOT_UNKNOWN if verdict in ("", "unknown") else DBOT_BAD


def source_reliability() -> str:
    return str(demisto.params().get("Reliability") or DEFAULT_RELIABILITY)


def find_file(client: "Client", file_hash: str) -> dict | None:
    """Microsoft's record of a file; None when Microsoft does not know it or cannot look it up (MD5)."""
    if MD5.match(file_hash):
        return None
    try:
        return client.get_file(file_hash) or None
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def standard_file(file_hash: str, record: dict | None, score: int | None) -> dict:
    if not record:
        return {hash_kind(file_hash): file_hash}
    context = {key: value for key, value in to_context(record, STANDARD_FILE).items() if value not in (None, "")}
    if score == DBOT_BAD:
        context["Malicious"] = {"Vendor": VENDOR, "Description": record.get("determinationValue")
                                or record.get("determinationType")}
    return context


def file_lookup_result(client: "Client", args: dict, name: str, *, scores: bool) -> CommandResult:
    """The file info of each hash (and, for reputation, its DBotScore), unknown hashes as notes."""
    found, failed = call_for_each(file_hashes_arg(args, name), lambda file_hash: find_file(client, file_hash),
                                  "File lookup")
    reliability = source_reliability() if scores else ""
    files, standard, dbot, rows = [], [], [], []
    for file_hash, record in found:
        score = verdict_score((record or {}).get("determinationType")) if scores else None
        standard.append(standard_file(file_hash, record, score))
        if record:
            files.append(to_context(record, FILE))
        if scores:
            dbot.append({"Indicator": file_hash, "Type": "file", "Vendor": VENDOR, "Score": score,
                         "Reliability": reliability})
        note = "" if record else MD5_NOTE if hash_kind(file_hash) == "MD5" else UNKNOWN_FILE_NOTE
        rows.append({"Hash": file_hash, "Verdict": (record or {}).get("determinationType"), "Score": score,
                     "Threat": (record or {}).get("determinationValue"), "Signer": (record or {}).get("signer"),
                     "Size": (record or {}).get("size"), "Note": note})
    outputs: dict[str, Any] = {}
    if files:
        outputs[FILE.context_key()] = files
    if scores or files:
        outputs[STANDARD_FILE_KEY] = standard
    if dbot:
        outputs[DBOT_SCORE_KEY] = dbot
    headers = ["Hash", "Verdict", *(["Score"] if scores else []), "Threat", "Signer", "Size", "Note"]
    readable = markdown_table("Microsoft Defender for Endpoint files", rows, headers)
    return CommandResult(readable + failures_readable(failed, "Hash"), outputs,
                         raw=[record for _, record in found if record])


@command("file", FILE_READ)
def file_command(client: "Client", args: dict) -> CommandResult:
    return file_lookup_result(client, args, "file", scores=True)


@command("microsoft-atp-get-file-info", FILE_READ)
def get_file_info_command(client: "Client", args: dict) -> CommandResult:
    return file_lookup_result(client, args, "hash", scores=False)


@command("microsoft-atp-get-file-statistics", FILE_READ)
def get_file_statistics_command(client: "Client", args: dict) -> CommandResult:
    file_hash = validate_file_hash(arg_required(args, "file_hash"), "file_hash")
    if hash_kind(file_hash) == "MD5":
        raise ArgumentError(f"file_hash: {MD5_NOTE} (got an MD5 hash).")
    stats = client.get_file_statistics(file_hash, look_back_arg(args))
    result = entity_result(FILE_STATISTICS, stats, "")
    result.readable = markdown_table(f"Prevalence of file {file_hash}",
                                     {"Sha1": stats.get("sha1"), **to_context(stats, FILE_PREVALENCE)})
    result.outputs[STANDARD_FILE_KEY] = to_context(stats, STANDARD_FILE_PREVALENCE)
    return result


@command("microsoft-atp-get-ip-statistics", ("Ip.Read.All",))
def get_ip_statistics_command(client: "Client", args: dict) -> CommandResult:
    ip = validate_ip(arg_required(args, "ip"))
    stats = client.get_ip_statistics(ip, look_back_arg(args))
    return entity_result(IP_PREVALENCE, stats, f"Prevalence of IP address {ip}")


@command("microsoft-atp-get-domain-statistics", ("URL.Read.All",))
def get_domain_statistics_command(client: "Client", args: dict) -> CommandResult:
    domain = validate_domain(arg_required(args, "domain"))
    stats = client.get_domain_statistics(domain, look_back_arg(args))
    return entity_result(DOMAIN_PREVALENCE, stats, f"Prevalence of domain {domain}")


# ============================================================================================
# 6.11 Vulnerability management
# ============================================================================================


SOFTWARE_READ = ("Software.Read.All",)
VULNERABILITY_READ = ("Vulnerability.Read.All",)
RECOMMENDATION_READ = ("SecurityRecommendation.Read.All",)
SCORE_READ = ("Score.Read.All",)
REMEDIATION_READ = ("RemediationTasks.Read.All",)
VULNERABILITIES_PAGE_SIZE = 8_000  # Microsoft's $top limit for /vulnerabilities (10,000 elsewhere)
CVE_SEVERITIES = ("Low", "Medium", "High", "Critical")
RECOMMENDATION_STATUSES = ("Active", "Exception")
REMEDIATION_TYPES = ("ConfigurationChange", "Update", "Upgrade", "Uninstall")
REMEDIATION_STATUSES = ("Active", "Completed")
SOFTWARE_FILTER_FIELDS = ("id", "name", "vendor")
VULNERABILITY_FILTER_FIELDS = ("id", "name", "description", "cvssV3", "publishedOn", "severity", "updatedOn")
MACHINE_VULNERABILITY_FILTER_FIELDS = ("id", "cveId", "machineId", "fixingKbId", "productName", "productVersion",
                                       "severity", "productVendor")
RECOMMENDATION_FILTER_FIELDS = ("id", "productName", "vendor", "recommendedVersion", "recommendationCategory",
                                "subCategory", "severityScore", "remediationType", "recommendedProgram",
                                "recommendedVendor", "status")
REMEDIATION_FILTER_FIELDS = ("createdOn", "status")
_ID_PART = r"[A-Za-z0-9_.+!~-]+"  # e.g. microsoft-_-.net_framework, notepad-plus-plus-_-notepad++
SOFTWARE_ID = re.compile(rf"^({_ID_PART})-_-({_ID_PART})$")
CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,}$", re.IGNORECASE)
RECOMMENDATION_ID = re.compile(rf"^(va|sca)-_-{_ID_PART}(-_-{_ID_PART})*$", re.IGNORECASE)
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
CVE_KEY = "CVE(val.ID && val.ID == obj.ID)"


def _same_names(*names: str) -> dict[str, str]:
    """A field table for contexts that keep Microsoft's camelCase names as they are."""
    return {name: name for name in names}


VULNERABILITY_FIELDS = ("id", "name", "description", "severity", "cvssV3", "exposedMachines", "publishedOn",
                        "updatedOn", "publicExploit", "exploitVerified", "exploitInKit", "exploitTypes", "exploitUris")
VULNERABILITY_HEADERS = ("id", "severity", "cvssV3", "exposedMachines", "publicExploit", "publishedOn", "name")
SOFTWARE = EntitySpec(_same_names(
    "id", "name", "vendor", "weaknesses", "publicExploit", "activeAlert", "exposedMachines", "installedMachines",
    "impactScore", "isNormalized", "category", "distributions"), path="Software", key=("id",),
    headers=("id", "name", "vendor", "weaknesses", "exposedMachines", "installedMachines", "publicExploit",
             "impactScore"))
MACHINE_SOFTWARE = EntitySpec({
    "id": "ID", "name": "Name", "vendor": "Vendor", "weaknesses": "Weaknesses", "publicExploit": "PublicExploit",
    "activeAlert": "ActiveAlert", "exposedMachines": "ExposedMachines", "installedMachines": "InstalledMachines",
    "impactScore": "ImpactScore", "isNormalized": "IsNormalized", "category": "Category",
    "distributions": "Distributions",
}, path="Software", headers=("ID", "Name", "Vendor", "Weaknesses", "PublicExploit", "ExposedMachines", "ImpactScore"))
SOFTWARE_VERSION = EntitySpec(_same_names("softwareId", "version", "installations", "vulnerabilities"),
                              path="SoftwareVersion", key=("softwareId", "version"))
SOFTWARE_MACHINE = EntitySpec(_same_names("id", "computerDnsName", "osPlatform", "rbacGroupName", "rbacGroupId"),
                              path="SoftwareMachine", key=("id",))
SOFTWARE_CVE = EntitySpec(_same_names(*VULNERABILITY_FIELDS), path="SoftwareCVE", key=("id",),
                          headers=VULNERABILITY_HEADERS)
SOFTWARE_KB = EntitySpec(_same_names("id", "name", "osBuild", "productsNames", "url", "machineMissedOn",
                                     "cveAddressed"), path="SoftwareKB", key=("id",))
VULNERABILITY = SOFTWARE_CVE.extend(path="Vulnerability")
MACHINE_CVE = EntitySpec(_same_names(*MACHINE_VULNERABILITY_FILTER_FIELDS), path="MachineCVE", key=("id",),
                         headers=("machineId", "cveId", "severity", "productVendor", "productName", "productVersion",
                                  "fixingKbId"))
CVE_MACHINE = EntitySpec({
    "id": "ID", "computerDnsName": "ComputerDNSName", "osPlatform": "OSPlatform", "rbacGroupName": "RBACGroupName",
    "rbacGroupId": "RBACGroupID", "cves": "CVE",
}, path="CveMachine")
PUBLIC_PRODUCT_FIX = EntitySpec({
    "id": "ID", "name": "Name", "productsNames": "ProductsNames", "url": "URL", "machineMissedOn": "MachineMissedOn",
    "cveAddressed": "CVEAddressed", "osBuild": "OSBuild",
}, path="PublicProductFix")
PUBLIC_VULNERABILITY = EntitySpec({
    "id": "ID", "name": "Name", "cveSupportability": "CVESupportability", "CveSupportability": "CVESupportability",
    "cvssV3": "CVSSV3", "cvssVector": "CVSSVector", "description": "Description", "epss": "EPSS",
    "exploitInKit": "ExploitInKit", "exploitTypes": "ExploitTypes", "exploitUris": "ExploitUris",
    "exploitVerified": "ExploitVerified", "exposedMachines": "ExposedMachines", "firstDetected": "FirstDetected",
    "publicExploit": "PublicExploit", "publishedOn": "PublishedOn", "severity": "Severity", "tags": "Tags",
    "updatedOn": "UpdatedOn",
}, path="PublicVulnerability", headers=("ID", "Severity", "CVSSV3", "PublicExploit", "ExploitVerified",
                                        "FirstDetected", "PublishedOn", "Name"))
RECOMMENDATION_MACHINE = EntitySpec({"id": "ID", "computerDnsName": "ComputerDNSName", "osPlatform": "OSPlatform",
                                     "rbacGroupName": "RBACGroupName"})
RECOMMENDATION_CVE = EntitySpec({"id": "ID", "severity": "Severity", "cvssV3": "CVSSV3",
                                 "publicExploit": "PublicExploit"})
RECOMMENDATION = EntitySpec({
    "id": "ID", "productName": "ProductName", "recommendationName": "RecommendationName",
    "weaknesses": "Weaknesses", "vendor": "Vendor", "recommendedVersion": "RecommendedVersion",
    "recommendedProgram": "RecommendedProgram", "recommendedVendor": "RecommendedVendor",
    "recommendationCategory": "RecommendationCategory", "subCategory": "SubCategory",
    "severityScore": "SeverityScore", "publicExploit": "PublicExploit", "activeAlert": "ActiveAlert",
    "associatedThreats": "AssociatedThreats", "remediationType": "RemediationType", "status": "Status",
    "configScoreImpact": "ConfigScoreImpact", "exposureImpact": "ExposureImpact",
    "totalMachineCount": "TotalMachineCount", "exposedMachinesCount": "ExposedMachinesCount",
    "nonProductivityImpactedAssets": "NonProductivityImpactedAssets", "relatedComponent": "RelatedComponent",
    "machines": ("Machines", RECOMMENDATION_MACHINE), "vulnerabilities": ("Vulnerabilities", RECOMMENDATION_CVE),
}, path="Recommendation", headers=("ID", "RecommendationName", "SeverityScore", "ExposedMachinesCount", "Weaknesses",
                                   "PublicExploit", "RemediationType"))
EXPOSURE_SCORE = EntitySpec({"time": "Time", "score": "Score"}, path="ExposureScore", key=())
MACHINE_GROUP_SCORE = EntitySpec({"time": "Time", "score": "Score", "rbacGroupName": "RBACGroupName",
                                  "rbacGroupId": "RBACGroupID"}, path="MachineGroupExposureScore",
                                 key=("RBACGroupName",), headers=("RBACGroupName", "Score", "Time"))
REMEDIATION_TASK = EntitySpec({
    "id": "ID", "title": "Title", "createdOn": "CreatedOn", "requesterEmail": "RequesterEmail",
    "requesterNotes": "RequesterNotes", "status": "Status", "statusLastModifiedOn": "StatusLastModifiedOn",
    "description": "Description", "relatedComponent": "RelatedComponent", "targetDevices": "TargetDevices",
    "fixedDevices": "FixedDevices", "rbacGroupNames": "RBACGroupNames", "dueOn": "DueOn", "category": "Category",
    "priority": "Priority", "type": "Type", "productId": "ProductID", "vendorId": "VendorID", "nameId": "NameID",
    "recommendedVersion": "RecommendedVersion", "completionMethod": "CompletionMethod",
}, path="RemediationTask", headers=("ID", "Title", "Status", "Priority", "TargetDevices", "FixedDevices", "DueOn"))


class VulnerabilityApi:
    """Defender API calls of the vulnerability management (software, CVEs, recommendations) area (mixed into Client)."""

    def list_software(self, *, odata_filter: str | None = None, limit: int | None = None,
                      offset: int = 0) -> Iterator[dict]:
        return self.paginate("Software", _filter_param(odata_filter), limit=limit, offset=offset)

    def list_software_versions(self, software_id: str) -> list[dict]:
        return list(self.paginate(f"Software/{segment(software_id, 'id')}/distributions"))

    def list_software_machines(self, software_id: str) -> Iterator[dict]:
        return self.paginate(f"Software/{segment(software_id, 'id')}/machineReferences")

    def list_software_vulnerabilities(self, software_id: str) -> Iterator[dict]:
        return self.paginate(f"Software/{segment(software_id, 'id')}/vulnerabilities",
                             page_size=VULNERABILITIES_PAGE_SIZE)

    def list_software_missing_kbs(self, software_id: str) -> Iterator[dict]:
        return self.paginate(f"Software/{segment(software_id, 'id')}/getmissingkbs")

    def list_vulnerabilities(self, *, odata_filter: str | None = None, limit: int | None = None,
                             offset: int = 0) -> Iterator[dict]:
        return self.paginate("vulnerabilities", _filter_param(odata_filter), limit=limit, offset=offset,
                             page_size=VULNERABILITIES_PAGE_SIZE)

    def list_vulnerability_machines(self, cve_id: str) -> list[dict]:
        return list(self.paginate(f"vulnerabilities/{segment(cve_id, 'cve_id')}/machineReferences"))

    def list_machine_vulnerability_records(self, *, odata_filter: str | None = None, limit: int | None = None,
                                           offset: int = 0) -> Iterator[dict]:
        return self.paginate("vulnerabilities/machinesVulnerabilities", _filter_param(odata_filter), limit=limit,
                             offset=offset)

    def list_machine_software(self, machine_id: str) -> Iterator[dict]:
        return self.paginate(f"machines/{segment(machine_id, 'machine_id')}/software")

    def list_machine_missing_kbs(self, machine_id: str) -> Iterator[dict]:
        return self.paginate(f"machines/{segment(machine_id, 'machine_id')}/getmissingkbs")

    def list_machine_vulnerabilities(self, machine_id: str) -> Iterator[dict]:
        return self.paginate(f"machines/{segment(machine_id, 'machine_id')}/vulnerabilities",
                             page_size=VULNERABILITIES_PAGE_SIZE)

    def list_recommendations(self, *, odata_filter: str | None = None, limit: int | None = None,
                             offset: int = 0) -> Iterator[dict]:
        return self.paginate("recommendations", _filter_param(odata_filter), limit=limit, offset=offset)

    def list_recommendation_machines(self, recommendation_id: str) -> list[dict]:
        return list(self.paginate(f"recommendations/{segment(recommendation_id, 'id')}/machineReferences"))

    def list_recommendation_vulnerabilities(self, recommendation_id: str) -> list[dict]:
        return list(self.paginate(f"recommendations/{segment(recommendation_id, 'id')}/vulnerabilities",
                                  page_size=VULNERABILITIES_PAGE_SIZE))

    def get_exposure_score(self) -> dict:
        return self.request("GET", "exposureScore") or {}

    def list_exposure_scores_by_machine_group(self) -> list[dict]:
        return list(self.paginate("exposureScore/ByMachineGroups"))

    def list_remediation_tasks(self, *, odata_filter: str | None = None, limit: int | None = None,
                               offset: int = 0) -> Iterator[dict]:
        return self.paginate("remediationTasks", _filter_param(odata_filter), limit=limit, offset=offset)

    def get_remediation_task(self, task_id: str) -> dict:
        return self.request("GET", f"remediationTasks/{segment(task_id, 'id')}") or {}


def _filter_param(odata_filter: str | None) -> dict:
    return {"$filter": odata_filter} if odata_filter else {}


def validate_software_id(value: str, name: str = "id") -> str:
    if not SOFTWARE_ID.match(value.strip()):
        raise ArgumentError(f"{name} must be a software ID in the form vendor-_-product, e.g. microsoft-_-edge "
                            f"(got '{value}'). Find IDs with !microsoft-atp-list-software.")
    return value.strip().lower()


def validate_cve_id(value: str, name: str = "cve_id") -> str:
    if not CVE_ID.match(value.strip()):
        raise ArgumentError(f"{name} must be a CVE ID such as CVE-2024-21413 (got '{value}').")
    return value.strip().upper()


def validate_recommendation_id(value: str, name: str = "id") -> str:
    if not RECOMMENDATION_ID.match(value.strip()):
        raise ArgumentError(f"{name} must be a recommendation ID such as va-_-microsoft-_-edge or sca-_-scid-2010 "
                            f"(got '{value}').")
    return value.strip().lower()


def validate_task_id(value: str, name: str = "id") -> str:
    if not GUID.match(value.strip()):
        raise ArgumentError(f"{name} must be a remediation task ID (a GUID) (got '{value}').")
    return value.strip().lower()


def validated_list(args: dict, name: str, validate: Callable[[str, str], str]) -> list[str]:
    return list(dict.fromkeys(validate(value, name) for value in arg_to_list(args.get(name))))


def arg_to_score(value: Any, name: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        score = float(str(value).strip())
    except ValueError:
        raise ArgumentError(f"{name} must be a number from 0 to 10 (got '{value}').") from None
    if not 0 <= score <= 10:
        raise ArgumentError(f"{name} must be a number from 0 to 10 (got '{value}').")
    return score


def cve_context(vulnerability: dict) -> dict:
    """The standard CVE context of one vulnerability (or of a machine-vulnerability record, which has only its ID)."""
    fields = {"ID": vulnerability.get("cveId") or vulnerability.get("id"), "CVSS": vulnerability.get("cvssV3"),
              "Description": vulnerability.get("description"), "Published": vulnerability.get("publishedOn"),
              "Modified": vulnerability.get("updatedOn")}
    return {key: value for key, value in fields.items() if value is not None}


def collect_cves(records: Iterable[dict], cves: dict[str, dict]) -> Iterator[dict]:
    """Passes records through unchanged while noting each one's CVE context (pages stay streamed)."""
    for record in records:
        cve = cve_context(record)
        if cve.get("ID"):
            cves.setdefault(cve["ID"], cve)
        yield record


def vulnerabilities_result(spec: EntitySpec, records: Iterable[dict], title: str, **options: Any) -> CommandResult:
    """entity_result plus the standard CVE context for every vulnerability returned."""
    cves: dict[str, dict] = {}
    result = entity_result(spec, collect_cves(records, cves), title, **options)
    if cves:
        result.outputs[CVE_KEY] = list(cves.values())
    return result


def software_id_arg(args: dict) -> str:
    return validate_software_id(arg_required(args, "id"))


def machine_id_arg(args: dict) -> str:
    return validate_machine_id(arg_required(args, "machine_id"))


@command("microsoft-atp-list-software", SOFTWARE_READ)
def list_software_command(client: "Client", args: dict) -> CommandResult:
    odata = ODataFilter(SOFTWARE_FILTER_FIELDS)
    odata.one_of("id", validated_list(args, "id", validate_software_id))
    odata.one_of("name", arg_to_list(args.get("name")))
    odata.one_of("vendor", arg_to_list(args.get("vendor")))
    paging = paging_args(args)
    software = client.list_software(odata_filter=odata.build(), limit=paging.limit, offset=paging.offset)
    return entity_result(SOFTWARE, software, "Software")


@command("microsoft-atp-list-software-version-distribution", SOFTWARE_READ)
def list_software_version_distribution_command(client: "Client", args: dict) -> CommandResult:
    software_id = software_id_arg(args)
    versions = client.list_software_versions(software_id)
    return entity_result(SOFTWARE_VERSION, ({**v, "softwareId": software_id} for v in versions),
                         f"Installed versions of {software_id}")


@command("microsoft-atp-list-machines-by-software", SOFTWARE_READ)
def list_machines_by_software_command(client: "Client", args: dict) -> CommandResult:
    software_id = software_id_arg(args)
    return entity_result(SOFTWARE_MACHINE, client.list_software_machines(software_id),
                         f"Machines with {software_id} installed")


@command("microsoft-atp-list-vulnerabilities-by-software", VULNERABILITY_READ)
def list_vulnerabilities_by_software_command(client: "Client", args: dict) -> CommandResult:
    software_id = software_id_arg(args)
    return vulnerabilities_result(SOFTWARE_CVE, client.list_software_vulnerabilities(software_id),
                                  f"Vulnerabilities of {software_id}")


@command("microsoft-atp-list-missing-kb-by-software", SOFTWARE_READ)
def list_missing_kb_by_software_command(client: "Client", args: dict) -> CommandResult:
    software_id = software_id_arg(args)
    return entity_result(SOFTWARE_KB, client.list_software_missing_kbs(software_id),
                         f"Security updates missing for {software_id}")


def vulnerabilities_filter(args: dict, now: datetime) -> str | None:
    odata = ODataFilter(VULNERABILITY_FILTER_FIELDS)
    odata.one_of("id", validated_list(args, "id", validate_cve_id))
    odata.eq("name", str(args.get("name_equal") or "").strip())
    odata.contains("name", str(args.get("name_contains") or "").strip())
    odata.contains("description", str(args.get("description_contains") or "").strip())
    odata.compare("publishedOn", "ge", arg_to_datetime(args.get("published_on"), "published_on", now=now))
    odata.compare("updatedOn", "ge", arg_to_datetime(args.get("updated_on"), "updated_on", now=now))
    odata.compare("cvssV3", "ge", arg_to_score(args.get("cvss"), "cvss"))
    odata.one_of("severity", arg_choices(args.get("severity"), "severity", CVE_SEVERITIES))
    return odata.build()


@command("microsoft-atp-list-vulnerabilities", VULNERABILITY_READ)
def list_vulnerabilities_command(client: "Client", args: dict) -> CommandResult:
    odata_filter = vulnerabilities_filter(args, client.clock.utcnow())
    paging = paging_args(args, default_limit=25)
    vulnerabilities = client.list_vulnerabilities(odata_filter=odata_filter, limit=paging.limit, offset=paging.offset)
    return vulnerabilities_result(VULNERABILITY, vulnerabilities, "Vulnerabilities")


def software_clause(software_id: str) -> ODataFilter:
    vendor, product = SOFTWARE_ID.match(software_id).groups()
    return ODataFilter(MACHINE_VULNERABILITY_FILTER_FIELDS).eq("productVendor", vendor).eq("productName", product)


def machine_vulnerabilities_filter(args: dict, machine_id: str | None = None) -> ODataFilter:
    odata = ODataFilter(MACHINE_VULNERABILITY_FILTER_FIELDS)
    odata.eq("machineId", machine_id)
    odata.any_of(*(software_clause(s) for s in validated_list(args, "software_id", validate_software_id)))
    odata.one_of("cveId", validated_list(args, "cve_id", validate_cve_id))
    odata.one_of("productName", arg_to_list(args.get("product_name")))
    odata.one_of("productVersion", arg_to_list(args.get("product_version")))
    odata.one_of("severity", arg_choices(args.get("severity"), "severity", CVE_SEVERITIES))
    odata.one_of("productVendor", arg_to_list(args.get("product_vendor")))
    return odata


@command("microsoft-atp-list-vulnerabilities-by-machine", VULNERABILITY_READ)
def list_vulnerabilities_by_machine_command(client: "Client", args: dict) -> CommandResult:
    machine_ids = validated_list(args, "machine_id", validate_machine_id)
    machine_vulnerabilities_filter(args)  # checks every argument before the first call
    paging = paging_args(args, default_limit=25)

    def records_of(machine_id: str | None) -> Iterator[dict]:
        return client.list_machine_vulnerability_records(
            odata_filter=machine_vulnerabilities_filter(args, machine_id).build(), limit=paging.limit,
            offset=paging.offset)

    if not machine_ids:  # one walk over every machine, streamed page by page
        return vulnerabilities_result(MACHINE_CVE, records_of(None), "Vulnerabilities found on machines")
    found, failed = call_for_each(machine_ids, lambda machine_id: list(records_of(machine_id)),
                                  "Listing the machine's vulnerabilities")
    result = vulnerabilities_result(MACHINE_CVE, (record for _, records in found for record in records),
                                    "Vulnerabilities found on machines", failed=failed, failure_label="Machine ID")
    summary = [{"Machine ID": machine_id, "Vulnerabilities": len(records) or "none found"}
               for machine_id, records in found]
    result.readable += "\n\n" + markdown_table("Per machine", summary)
    return result


@command("microsoft-atp-list-machines-by-vulnerability", VULNERABILITY_READ)
def list_machines_by_vulnerability_command(client: "Client", args: dict) -> CommandResult:
    cve_ids = validated_list(args, "cve_id", validate_cve_id)
    if not cve_ids:
        raise ArgumentError("cve_id is required: one or more CVE IDs such as CVE-2024-21413, comma-separated.")
    found, failed = call_for_each(cve_ids, client.list_vulnerability_machines, "Finding machines for the CVE")
    machines: dict[str, dict] = {}
    for cve_id, exposed in found:
        for machine in exposed:
            entry = machines.setdefault(machine.get("id"), {**machine, "cves": []})
            entry["cves"].append(cve_id)
    result = entity_result(CVE_MACHINE, machines.values(), f"Machines exposed to {', '.join(cve_ids)}",
                           failed=failed, failure_label="CVE")
    empty = [cve_id for cve_id, exposed in found if not exposed]
    if empty:
        result.readable += f"\n\nNo exposed machines for: {', '.join(empty)}."
    return result


@command("microsoft-atp-get-machine-software", SOFTWARE_READ)
def get_machine_software_command(client: "Client", args: dict) -> CommandResult:
    machine_id = machine_id_arg(args)
    return entity_result(MACHINE_SOFTWARE, client.list_machine_software(machine_id),
                         f"Software installed on {machine_id}")


@command("microsoft-atp-get-machine-missing-kbs", SOFTWARE_READ)
def get_machine_missing_kbs_command(client: "Client", args: dict) -> CommandResult:
    machine_id = machine_id_arg(args)
    return entity_result(PUBLIC_PRODUCT_FIX, client.list_machine_missing_kbs(machine_id),
                         f"Security updates missing on {machine_id}")


@command("microsoft-atp-get-machine-vulnerabilities", VULNERABILITY_READ)
def get_machine_vulnerabilities_command(client: "Client", args: dict) -> CommandResult:
    machine_id = machine_id_arg(args)
    return vulnerabilities_result(PUBLIC_VULNERABILITY, client.list_machine_vulnerabilities(machine_id),
                                  f"Vulnerabilities found on {machine_id}")


def recommendations_filter(args: dict) -> str | None:
    odata = ODataFilter(RECOMMENDATION_FILTER_FIELDS)
    odata.one_of("id", validated_list(args, "id", validate_recommendation_id))
    odata.one_of("productName", arg_to_list(args.get("product_name")))
    odata.one_of("vendor", arg_to_list(args.get("vendor")))
    odata.compare("severityScore", "ge", arg_to_score(args.get("severity_score"), "severity_score"))
    odata.eq("status", arg_choice(args.get("status"), "status", RECOMMENDATION_STATUSES))
    odata.one_of("remediationType", arg_choices(args.get("remediation_type"), "remediation_type", REMEDIATION_TYPES))
    return odata.build()


def add_coverage(client: "Client", recommendations: list[dict], key: str, call: Callable[[str], list[dict]],
                 what: str) -> Failures:
    """Adds what each recommendation covers under `key`, one call per recommendation; failures are reported."""
    found, failed = call_for_each([r["id"] for r in recommendations if r.get("id")], call, what)
    covered = dict(found)
    for recommendation in recommendations:
        if recommendation.get("id") in covered:
            recommendation[key] = covered[recommendation["id"]]
    return failed


@command("microsoft-atp-list-security-recommendations", RECOMMENDATION_READ)
def list_security_recommendations_command(client: "Client", args: dict) -> CommandResult:
    odata_filter = recommendations_filter(args)
    with_machines = arg_to_bool(args.get("include_machines"), "include_machines")
    with_vulnerabilities = arg_to_bool(args.get("include_vulnerabilities"), "include_vulnerabilities")
    paging = paging_args(args)
    recommendations = client.list_recommendations(odata_filter=odata_filter, limit=paging.limit, offset=paging.offset)
    if not (with_machines or with_vulnerabilities):
        return entity_result(RECOMMENDATION, recommendations, "Security recommendations")
    recommendations = list(recommendations)
    failed: Failures = []
    if with_machines:
        failed += add_coverage(client, recommendations, "machines", client.list_recommendation_machines,
                               "Listing the recommendation's machines")
    if with_vulnerabilities:
        failed += add_coverage(client, recommendations, "vulnerabilities", client.list_recommendation_vulnerabilities,
                               "Listing the recommendation's vulnerabilities")
    result = entity_result(RECOMMENDATION, recommendations, "Security recommendations", failed=failed,
                           failure_label="Recommendation")
    cves = {cve["ID"]: cve for r in recommendations for cve in map(cve_context, r.get("vulnerabilities") or [])
            if cve.get("ID")}
    if cves:
        result.outputs[CVE_KEY] = list(cves.values())
    return result


@command("microsoft-atp-get-exposure-score", SCORE_READ)
def get_exposure_score_command(client: "Client", args: dict) -> CommandResult:
    by_group = arg_to_bool(args.get("by_machine_group"), "by_machine_group")
    result = entity_result(EXPOSURE_SCORE, client.get_exposure_score(), "Exposure score of the organization")
    if by_group:
        groups = entity_result(MACHINE_GROUP_SCORE, client.list_exposure_scores_by_machine_group(),
                               "Exposure score by device group")
        result.outputs.update(groups.outputs)
        result.readable += "\n\n" + groups.readable
        result.raw = {"organization": result.raw, "byMachineGroup": groups.raw}
    return result


@command("microsoft-atp-list-remediation-tasks", REMEDIATION_READ)
def list_remediation_tasks_command(client: "Client", args: dict) -> CommandResult:
    task_ids = validated_list(args, "id", validate_task_id)
    if task_ids:
        found, failed = call_for_each(task_ids, client.get_remediation_task, "Getting the remediation task")
        return entity_result(REMEDIATION_TASK, [task for _, task in found], "Remediation tasks", failed=failed,
                             failure_label="Task ID")
    odata = ODataFilter(REMEDIATION_FILTER_FIELDS)
    odata.eq("status", arg_choice(args.get("status"), "status", REMEDIATION_STATUSES))
    odata.compare("createdOn", "ge", arg_to_datetime(args.get("creation_time"), "creation_time",
                                                     now=client.clock.utcnow()))
    paging = paging_args(args)
    tasks = client.list_remediation_tasks(odata_filter=odata.build(), limit=paging.limit, offset=paging.offset)
    return entity_result(REMEDIATION_TASK, tasks, "Remediation tasks")


# ============================================================================================
# 7. Client
# ============================================================================================


class Client(Transport, MachinesApi, MachineActionsApi, AlertsApi, InvestigationsApi, HuntingApi, IndicatorsApi,
             LiveResponseApi, ReputationApi, VulnerabilityApi):
    """The Defender API client commands receive: the one HTTP core plus every area's endpoint calls."""


# ============================================================================================
# 8. main()
# ============================================================================================


def build_client(params: dict, session: requests.Session | None = None, clock: Clock = SYSTEM_CLOCK) -> Client:
    session = session or requests.Session()
    settings = auth_settings_from_params(params)
    network = Network.from_params(params)
    provider = build_token_provider(settings, session, network, clock)
    client = Client(settings.cloud.api_base, BearerAuth(provider), verify=network.verify, proxies=network.proxies,
                    session=session, clock=clock)
    client.configure_hunting(params, settings.cloud.graph_base,
                             BearerAuth(build_token_provider(settings, session, network, clock, graph=True)))
    return client


def return_results(result: Any) -> None:
    if isinstance(result, list):
        for item in result:
            return_results(item)
    elif isinstance(result, CommandResult):
        demisto.results(result.to_entry())
    elif result is not None:
        demisto.results(result)


def return_error(message: str) -> None:
    demisto.error(message)
    demisto.results({"Type": 4, "ContentsFormat": "text", "Contents": message})


def server_reports_metrics() -> bool:
    """Servers 6.8.0 and newer take API-execution-metrics entries."""
    try:
        version = str((demisto.demistoVersion() or {}).get("version") or "")
    except Exception:  # an older platform without demistoVersion()
        return False
    parts = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    return bool(parts) and parts >= METRICS_MIN_SERVER_VERSION


def report_api_metrics(command: str, client: Client | None) -> None:
    """One metrics entry after a command that called the API; never for test-module and fetch-incidents,
    whose results the platform reads as the test outcome and the incidents."""
    if client is None or command in ("test-module", "fetch-incidents"):
        return
    entry = client.metrics.entry()
    if entry and server_reports_metrics():
        demisto.results(entry)


def checked_args(args: dict) -> dict:
    """Refuses text that cannot be sent at all (lone surrogates from a broken encoding), naming the argument."""
    for name, value in args.items():
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ArgumentError(f"{name} contains characters that are not valid Unicode (a lone surrogate); "
                                "re-enter the value.") from None
    return args


def main(clock: Clock = SYSTEM_CLOCK) -> None:
    command = demisto.command()
    log_debug(f"Command being called is {command}")
    client = None
    try:
        spec = COMMANDS.get(command)
        if spec is None:
            raise IntegrationError(f"Command '{command}' is not implemented by {INTEGRATION_NAME}.")
        params = demisto.params()
        client = build_client(params, clock=clock)
        return_results(spec.func(client, params if spec.takes_params else checked_args(demisto.args())))
    except IntegrationError as exc:
        return_error(REDACT(str(exc)))
    except Exception as exc:  # never a traceback in the War Room
        demisto.debug(REDACT(f"{command} failed: {type(exc).__name__}: {exc}"))
        return_error(REDACT(f"Failed to execute {command}: {type(exc).__name__}: {exc}"))
    report_api_metrics(command, client)


if __name__ in ("__main__", "__builtin__", "builtins"):
    main()

"""Microsoft Defender for Endpoint integration for Cortex XSOAR.

Runs unchanged inside XSOAR and from the local `mde` CLI: it imports `demistomock as demisto`,
the standard library, requests, msal and cryptography, nothing else.

Sections, in this order:
 1. Cloud table and constants   one table drives every Microsoft URL
 2. Errors and secret redaction
 3. Auth providers             one class per authentication flow behind `get_token()`
 4. Client                     HTTP only: one method per Defender endpoint, retries, paging
 5. Helpers                    arguments, OData filters, output mapping, entries
 6. Commands                   `<verb>_<noun>_command(client, args)` by area
 7. COMMANDS table             command name -> function and the API roles it needs
 8. main()
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlparse

import msal
import requests
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


@dataclass(frozen=True)
class Cloud:
    """Where one Microsoft cloud keeps its login service and the Defender API."""

    login_host: str  # Entra ID authority host
    api_base: str  # Defender API host; the client appends /api
    scope: str  # OAuth2 scope of the Defender API application (WindowsDefenderATP)
    mi_resource: str  # resource asked of the managed-identity endpoint


_COMMERCIAL_LOGIN = "https://login.microsoftonline.com"
_US_GOV_LOGIN = "https://login.microsoftonline.us"
_COMMERCIAL_SCOPE = "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"
_US_GOV_SCOPE = "https://securitycenter.onmicrosoft.us/windowsatpservice/.default"

CLOUDS: dict[str, Cloud] = {
    "Worldwide": Cloud(_COMMERCIAL_LOGIN, "https://api.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                       "https://api.securitycenter.microsoft.com"),
    "US Geo Proximity": Cloud(_COMMERCIAL_LOGIN, "https://api-us.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                              "https://api.securitycenter.microsoft.com"),
    "EU Geo Proximity": Cloud(_COMMERCIAL_LOGIN, "https://api-eu.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                              "https://api.securitycenter.microsoft.com"),
    "UK Geo Proximity": Cloud(_COMMERCIAL_LOGIN, "https://api-uk.securitycenter.microsoft.com", _COMMERCIAL_SCOPE,
                              "https://api.securitycenter.microsoft.com"),
    "US GCC": Cloud(_COMMERCIAL_LOGIN, "https://api-gcc.securitycenter.microsoft.us", _COMMERCIAL_SCOPE,
                    "https://api-gcc.securitycenter.microsoft.us"),
    "US GCC-High": Cloud(_US_GOV_LOGIN, "https://api-gov.securitycenter.microsoft.us", _US_GOV_SCOPE,
                         "https://api-gov.securitycenter.microsoft.us"),
    "DoD": Cloud(_US_GOV_LOGIN, "https://api-gov.securitycenter.microsoft.us", _US_GOV_SCOPE,
                 "https://api-gov.securitycenter.microsoft.us"),
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

LOG = logging.getLogger("MicrosoftDefenderForEndpoint")


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

    def __init__(self, message: str, status: int | None = None, code: str = "", target: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code
        self.target = target


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


@dataclass
class AuthSettings:
    """Everything the auth layer needs, resolved from current and legacy instance parameters."""

    flow: str
    cloud: Cloud
    client_id: str = ""  # app (client) id, or the XSOAR app registration id
    tenant_id: str = ""  # Entra tenant id, or the XSOAR app token
    secret: str = ""  # client secret, or the XSOAR app encryption key
    thumbprint: str = ""
    private_key: str = ""
    redirect_uri: str = ""
    auth_code: str = ""
    managed_identity_client_id: str = ""
    oproxy_url: str = OPROXY_URL
    verify: bool = True
    proxies: dict[str, str] = field(default_factory=dict)


def _credential(params: dict, name: str, part: str = "password") -> str:
    value = params.get(name)
    if isinstance(value, dict):
        return str(value.get(part) or "").strip()
    return str(value or "").strip() if part == "password" else ""


def _first(*values: str) -> str:
    return next((value for value in values if value), "")


def resolve_flow(params: dict) -> str:
    """The "Authentication Flow" parameter, or the flow older instances imply."""
    flow = str(params.get("auth_flow") or "").strip()
    if flow:
        if flow not in AUTH_FLOWS:
            raise ConfigurationError(f"Authentication Flow '{flow}' is not supported. Choose one of: "
                                     f"{', '.join(AUTH_FLOWS)}.")
        return flow
    legacy_type = str(params.get("auth_type") or "").strip()
    if legacy_type == FLOW_MANAGED_IDENTITY:
        return FLOW_MANAGED_IDENTITY
    if legacy_type == FLOW_AUTH_CODE:
        return FLOW_AUTH_CODE
    if argToBoolean(params.get("self_deployed", False)):
        return FLOW_CLIENT_CREDENTIALS
    return FLOW_XSOAR_APP


def resolve_cloud(params: dict) -> Cloud:
    endpoint_type = str(params.get("endpoint_type") or "Worldwide").strip()
    if argToBoolean(params.get("is_gcc", False)):
        endpoint_type = "US GCC"
    url = str(params.get("url") or "").strip().rstrip("/")
    if endpoint_type == CUSTOM_CLOUD:
        if not url:
            raise ConfigurationError("Endpoint Type is 'Custom' but no Server URL is set. Enter the Defender API URL "
                                     "in Server URL (e.g. https://api.securitycenter.microsoft.com).")
        login = str(params.get("login_url") or "").strip().rstrip("/") or _COMMERCIAL_LOGIN
        return Cloud(login, url, _COMMERCIAL_SCOPE, CLOUDS["Worldwide"].mi_resource)
    if endpoint_type not in CLOUDS:
        raise ConfigurationError(f"Endpoint Type '{endpoint_type}' is unknown. Choose one of: "
                                 f"{', '.join(ENDPOINT_TYPES)}.")
    return CLOUDS[endpoint_type]


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


def auth_settings_from_params(params: dict) -> AuthSettings:
    flow = resolve_flow(params)
    insecure = argToBoolean(params.get("insecure", False))
    settings = AuthSettings(
        flow=flow,
        cloud=resolve_cloud(params),
        client_id=_first(_credential(params, "_auth_id_encrypted"), str(params.get("_auth_id") or "").strip(),
                         str(params.get("auth_id") or "").strip()),
        tenant_id=_first(_credential(params, "_tenant_id_encrypted"), str(params.get("_tenant_id") or "").strip(),
                         str(params.get("tenant_id") or "").strip()),
        secret=_first(_credential(params, "credentials"), str(params.get("enc_key") or "").strip()),
        thumbprint=normalize_thumbprint(_first(_credential(params, "creds_certificate", "identifier"),
                                               str(params.get("certificate_thumbprint") or "").strip())),
        private_key=normalize_private_key(_first(_credential(params, "creds_certificate"),
                                                 str(params.get("private_key") or "").strip())),
        redirect_uri=str(params.get("redirect_uri") or "").strip(),
        auth_code=_credential(params, "auth_code"),
        managed_identity_client_id=_credential(params, "managed_identities_client_id"),
        verify=not insecure,
        proxies={} if argToBoolean(params.get("proxy", False)) else {"http": "", "https": ""},
    )
    if flow == FLOW_XSOAR_APP and "@" in settings.client_id:
        registration_id, _, url = settings.client_id.partition("@")
        settings.client_id, settings.oproxy_url = registration_id, url
    REDACT.add(settings.secret, settings.private_key, settings.auth_code, settings.tenant_id
               if flow == FLOW_XSOAR_APP else "")
    return settings


class TokenStore:
    """Token state in the integration context, shared by every run of the instance.

    Keys mirror the older integration's (`access_token`, `valid_until`, `current_refresh_token`) so an
    upgraded instance keeps its state; `auth_fingerprint` drops the state when the auth setup changes.
    """

    KEYS = ("access_token", "valid_until", "current_refresh_token", "auth_fingerprint", "next_request_time",
            "delay_request_counter", "login_state", "used_auth_code")

    def __init__(self, fingerprint: str, clock: Callable[[], float] | None = None):
        self.fingerprint = fingerprint
        self.clock = clock or (lambda: time.time())

    def load(self) -> dict:
        context = demisto.getIntegrationContext() or {}
        if context.get("auth_fingerprint") not in (None, self.fingerprint):
            log_debug("Authentication settings changed since the last token; discarding stored tokens.")
            return {}
        return context

    def update(self, **values: Any) -> None:
        context = demisto.getIntegrationContext() or {}
        context.update(values, auth_fingerprint=self.fingerprint)
        demisto.setIntegrationContext(context)

    def valid_access_token(self) -> str | None:
        state = self.load()
        token, valid_until = state.get("access_token"), state.get("valid_until")
        if token and valid_until and self.clock() < float(valid_until):
            return str(token)
        return None

    def save_access_token(self, token: str, expires_in: int, refresh_token: str | None = None) -> None:
        valid_until = self.clock() + token_reuse_seconds(expires_in)
        values: dict[str, Any] = {"access_token": token, "valid_until": valid_until}
        if refresh_token is not None:
            values["current_refresh_token"] = refresh_token
        self.update(**values)

    def invalidate_access_token(self) -> None:
        self.update(access_token="", valid_until=0)

    def clear(self) -> None:
        context = demisto.getIntegrationContext() or {}
        demisto.setIntegrationContext({k: v for k, v in context.items() if k not in self.KEYS})


def token_reuse_seconds(expires_in: int) -> float:
    """How long a fresh token is reused: its lifetime less a margin, never less than half of it."""
    return max(expires_in - TOKEN_EXPIRY_MARGIN, expires_in / 2)


class MsalHttpClient:
    """The requests session msal uses, with our timeouts, proxy and certificate settings on every call."""

    def __init__(self, session: requests.Session, verify: bool, proxies: dict, timeout: tuple[int, int]):
        self.session, self.verify, self.proxies, self.timeout = session, verify, proxies, timeout

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return self.session.request(method, url, verify=self.verify, proxies=self.proxies, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._send("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._send("POST", url, **kwargs)

    def close(self) -> None:  # msal calls this; the session belongs to the Client
        pass


# Entra error codes, and what the user should do about each.
AADSTS_HINTS = {
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
    700027: "The client assertion was rejected. Check that Certificate Thumbprint and Private Key belong to a "
            "certificate uploaded to the app registration.",
    50011: "The redirect URI does not match the app registration. Make Application redirect URI exactly equal "
           "to a redirect URI of the app.",
    70008: "The authorization code or refresh token has expired. Run !microsoft-atp-auth-reset, then "
           "!microsoft-atp-generate-login-url and sign in again.",
    54005: "The authorization code was already used. Run !microsoft-atp-generate-login-url, sign in, and paste "
           "the new code into Authorization code.",
    9002313: "The authorization code or refresh token is invalid. Run !microsoft-atp-auth-reset, then "
             "!microsoft-atp-generate-login-url and sign in again.",
    70000: "The grant is invalid or was already used. Run !microsoft-atp-auth-reset, then "
           "!microsoft-atp-generate-login-url and sign in again.",
}


def entra_error_message(result: dict, what: str) -> str:
    """Turns an Entra/msal error dict into a sentence that says what to fix."""
    description = str(result.get("error_description") or "")
    description = re.split(r"\s*(?:Trace ID|Correlation ID|Timestamp):", description)[0]
    codes = [int(c) for c in result.get("error_codes") or [] if str(c).isdigit()]
    match = re.match(r"AADSTS(\d+):\s*", description)
    if match:
        codes = codes or [int(match.group(1))]
        description = description[match.end():]
    code_text = f" AADSTS{codes[0]}" if codes else ""
    hint = next((AADSTS_HINTS[c] for c in codes if c in AADSTS_HINTS), "")
    message = f"Microsoft Entra ID refused {what} ({result.get('error', 'error')}{code_text}): {description}".rstrip()
    return REDACT(f"{message} {hint}".strip())


class TokenProvider:
    """One way of proving identity. Subclasses implement `_acquire()`; caching and refresh live here."""

    flow = ""

    def __init__(self, settings: AuthSettings, session: requests.Session, store: TokenStore):
        self.settings, self.session, self.store = settings, session, store

    def validate(self) -> None:
        """Raise ConfigurationError naming the missing parameter."""

    def get_token(self, force_refresh: bool = False) -> str:
        self.validate()
        if not force_refresh:
            token = self.store.valid_access_token()
            if token:
                return token
        token, expires_in, refresh_token = self._acquire(force_refresh)
        REDACT.add(token, refresh_token)
        self.store.save_access_token(token, expires_in, refresh_token)
        return token

    def reset(self) -> None:
        self.store.clear()

    def _acquire(self, force_refresh: bool) -> tuple[str, int, str | None]:
        raise NotImplementedError

    def _http_client(self, timeout: tuple[int, int] = (CONNECT_TIMEOUT, READ_TIMEOUT)) -> MsalHttpClient:
        return MsalHttpClient(self.session, self.settings.verify, self.settings.proxies, timeout)

    def _token_from(self, result: dict, what: str) -> tuple[str, int, str | None]:
        if "access_token" not in result:
            raise AuthError(entra_error_message(result, what))
        return result["access_token"], int(result.get("expires_in") or 3599), result.get("refresh_token")


def _require(settings: AuthSettings, **names: str) -> None:
    missing = [label for attr, label in names.items() if not getattr(settings, attr)]
    if missing:
        raise ConfigurationError(f"{settings.flow}: set {', '.join(missing)} in the instance settings.")


class MsalConfidentialProvider(TokenProvider):
    """Shared by the two flows of a self-deployed Entra app (client credentials, authorization code)."""

    def __init__(self, settings: AuthSettings, session: requests.Session, store: TokenStore):
        super().__init__(settings, session, store)
        self._app: msal.ConfidentialClientApplication | None = None

    def validate(self) -> None:
        _require(self.settings, client_id="ID (application/client ID)", tenant_id="Token (tenant ID)")
        if not self.settings.secret and not (self.settings.thumbprint and self.settings.private_key):
            raise ConfigurationError(f"{self.settings.flow}: set Key (client secret), or Certificate Thumbprint "
                                     "and Private Key.")

    def _credential(self) -> str | dict:
        if self.settings.thumbprint and self.settings.private_key:
            return {"private_key": self.settings.private_key, "thumbprint": self.settings.thumbprint}
        return self.settings.secret

    @property
    def app(self) -> msal.ConfidentialClientApplication:
        # Built lazily: msal fetches the tenant's OpenID configuration when constructed.
        if self._app is None:
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.settings.client_id, client_credential=self._credential(),
                    authority=f"{self.settings.cloud.login_host}/{self.settings.tenant_id}",
                    http_client=self._http_client(), instance_discovery=False)
            except ValueError as exc:
                raise AuthError(REDACT(f"Could not use the credentials: {exc}. Check Certificate Thumbprint and "
                                       "Private Key (PEM).")) from exc
            except requests.RequestException as exc:
                raise AuthError(REDACT(f"Could not reach the Microsoft login service at "
                                       f"{self.settings.cloud.login_host}: {exc}")) from exc
        return self._app

    @property
    def scopes(self) -> list[str]:
        return [self.settings.cloud.scope]


class ClientCredentialsProvider(MsalConfidentialProvider):
    flow = FLOW_CLIENT_CREDENTIALS

    def _acquire(self, force_refresh: bool) -> tuple[str, int, str | None]:
        if force_refresh:  # msal would answer from its own in-memory cache
            for token in list(self.app.token_cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                self.app.token_cache.remove_at(token)
        result = self.app.acquire_token_for_client(scopes=self.scopes)
        token, expires_in, _ = self._token_from(result, "the client-credentials token request")
        return token, expires_in, None


class AuthorizationCodeProvider(MsalConfidentialProvider):
    flow = FLOW_AUTH_CODE

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

    def _acquire(self, force_refresh: bool) -> tuple[str, int, str | None]:
        state = self.store.load()
        refresh_token = state.get("current_refresh_token")
        if refresh_token:
            REDACT.add(refresh_token)
            result = self.app.acquire_token_by_refresh_token(refresh_token, scopes=self.scopes)
            if "access_token" not in result and state.get("current_refresh_token") != refresh_token:
                result = self.app.acquire_token_by_refresh_token(self.store.load()["current_refresh_token"],
                                                                 scopes=self.scopes)
            return self._token_from(result, "the refresh-token request")
        code = self._authorization_code(state)
        result = self.app.acquire_token_by_authorization_code(code, scopes=self.scopes,
                                                              redirect_uri=self.settings.redirect_uri)
        self.store.update(used_auth_code=_digest(code))
        return self._token_from(result, "the authorization code")

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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ManagedIdentityProvider(TokenProvider):
    flow = FLOW_MANAGED_IDENTITY

    def _acquire(self, force_refresh: bool) -> tuple[str, int, str | None]:
        client_id = self.settings.managed_identity_client_id
        identity = (msal.UserAssignedManagedIdentity(client_id=client_id) if client_id
                    else msal.SystemAssignedManagedIdentity())
        client = msal.ManagedIdentityClient(identity, http_client=self._http_client(MANAGED_IDENTITY_TIMEOUT),
                                            token_cache=msal.TokenCache())
        try:
            result = client.acquire_token_for_client(resource=self.settings.cloud.mi_resource)
        except requests.RequestException as exc:
            raise AuthError("Could not reach the Azure managed-identity endpoint. Azure Managed Identities work only "
                            "when this integration runs on an Azure resource with a managed identity assigned "
                            f"(error: {type(exc).__name__}).") from exc
        token, expires_in, _ = self._token_from(result, "the managed-identity token request")
        return token, expires_in, None


class XsoarAppProvider(TokenProvider):
    """The Cortex XSOAR app: the oproxy service exchanges our encrypted registration token for a token."""

    flow = FLOW_XSOAR_APP

    def validate(self) -> None:
        _require(self.settings, client_id="ID (registration ID from the consent page)",
                 tenant_id="Token (from the consent page)", secret="Key (from the consent page)")

    def _acquire(self, force_refresh: bool) -> tuple[str, int, str | None]:
        state = self.store.load()
        next_request_time = float(state.get("next_request_time") or 0)
        if time.time() < next_request_time:
            wait_until = datetime.fromtimestamp(next_request_time, timezone.utc).isoformat(timespec="seconds")
            raise AuthError(f"The last token request to the XSOAR app service failed; the next attempt is delayed "
                            f"until {wait_until} to protect the service.")
        body = {"app_name": OPROXY_APP_NAME, "registration_id": self.settings.client_id,
                "encrypted_token": self._encrypted_token(), "scope": None, "resource": ""}
        try:
            response = self.session.post(self.settings.oproxy_url, json=body, verify=self.settings.verify,
                                         proxies=self.settings.proxies, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.RequestException as exc:
            self._back_off(state)
            raise AuthError(f"Could not reach the XSOAR app token service at {self.settings.oproxy_url}: "
                            f"{type(exc).__name__}.") from exc
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
        self.store.update(next_request_time=0.0, delay_request_counter=1)
        return token, int(payload.get("expires_in") or 3595), None

    def _encrypted_token(self) -> str:
        try:
            key = base64.b64decode(self.settings.secret, validate=True)
            aes = AESGCM(key)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError("Key is not a valid encryption key from the consent page (expected base64 of a "
                                     "16, 24 or 32 byte key).") from exc
        nonce = os.urandom(12)
        plaintext = f"{int(time.time())}:{self.settings.tenant_id}".encode()
        return base64.b64encode(nonce + aes.encrypt(nonce, plaintext, None)).decode()

    def _back_off(self, state: dict) -> None:
        counter = min(int(state.get("delay_request_counter") or 1), 6)
        self.store.update(next_request_time=time.time() + 2 ** counter, delay_request_counter=counter + 1)


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


def build_token_provider(settings: AuthSettings, session: requests.Session) -> TokenProvider:
    fingerprint = _digest("|".join([settings.flow, settings.client_id, settings.cloud.login_host,
                                    settings.cloud.scope, settings.managed_identity_client_id,
                                    _digest(settings.tenant_id)]))
    return PROVIDERS[settings.flow](settings, session, TokenStore(fingerprint))


class BearerAuth(requests.auth.AuthBase):
    """Attaches the provider's token; the Client never knows which flow made it."""

    def __init__(self, provider: TokenProvider):
        self.provider = provider
        self.force_refresh = False

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.provider.get_token(force_refresh=self.force_refresh)}"
        self.force_refresh = False
        return request


# ============================================================================================
# 4. Client
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
    hint = STATUS_HINTS.get(status, "Microsoft's service failed; it was retried. Try again later."
                            if status >= 500 else "")
    text = f"{method} {path} failed with HTTP {status}{' ' + code if code else ''}: {message}".rstrip(": ")
    if hint:
        text += f". {hint}"
    if target:
        text += f" (correlation id: {target})"
    return ApiError(REDACT(text), status=status, code=code, target=target)


def connection_error_message(exc: requests.RequestException, url: str) -> str:
    host = urlparse(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return (f"TLS certificate verification failed for {host}. If a proxy re-signs traffic, point "
                "REQUESTS_CA_BUNDLE at its CA bundle, or select 'Trust any certificate (not secure)'.")
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"The proxy refused the connection to {host}. Check the system proxy, or clear 'Use system proxy'."
    if isinstance(exc, requests.Timeout):
        return f"Timed out talking to {host}. Check Server URL / Endpoint Type and that the host is reachable."
    return f"Could not connect to {host} ({type(exc).__name__}). Check Server URL / Endpoint Type and the network."


class Client:
    """Speaks HTTP to the Defender API: one method per endpoint, parsed JSON back, no platform calls."""

    def __init__(self, base_url: str, auth: BearerAuth, *, verify: bool = True, proxies: dict | None = None,
                 session: requests.Session | None = None, sleeper: Callable[[float], None] | None = None,
                 timeout: tuple[int, int] = (CONNECT_TIMEOUT, READ_TIMEOUT)):
        self.api_url = urljoin(base_url.rstrip("/") + "/", "api")
        self.auth = auth
        self.verify = verify
        self.proxies = proxies or {}
        self.session = session or requests.Session()
        self.sleeper = sleeper or (lambda seconds: time.sleep(seconds))
        self.timeout = timeout

    @property
    def provider(self) -> TokenProvider:
        return self.auth.provider

    # ---- transport -------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None) -> Any:
        """Sends one API call with the retry rules below and returns the parsed JSON (None when empty)."""
        url = path if path.startswith("https://") else f"{self.api_url}/{path.lstrip('/')}"
        query = urlencode(params, quote_via=_quote_odata) if params else None
        response = self._send(method, url, query, json_body)
        if not response.ok:
            raise api_error_from(response, method, _display_path(url))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"{method} {_display_path(url)} returned a body that is not JSON.") from exc

    def _send(self, method: str, url: str, query: str | None, json_body: Any) -> requests.Response:
        """429: wait as told and retry (any method: the call was not processed). 5xx and connection
        errors: retry reads with backoff; a write that may have reached the server is not repeated.
        401: refresh the token once and retry."""
        attempt, waited, refreshed = 0, 0.0, False
        is_read = method == "GET"
        while True:
            try:
                response = self.session.request(method, url, params=query, json=json_body, auth=self.auth,
                                                verify=self.verify, proxies=self.proxies, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                retryable = (is_read or isinstance(exc, requests.ConnectTimeout)) and not isinstance(
                    exc, requests.exceptions.SSLError)
                if retryable and attempt < MAX_RETRIES:
                    attempt += 1
                    log_debug(f"{method} {_display_path(url)}: {type(exc).__name__}, retry {attempt}")
                    self.sleeper(backoff_seconds(attempt))
                    continue
                raise ApiError(connection_error_message(exc, url)) from exc
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True
                self.auth.force_refresh = True
                log_debug(f"{method} {_display_path(url)}: 401, refreshing the token once")
                continue
            if status == 429:
                delay = retry_after_seconds(response, attempt)
                if waited + delay <= MAX_RATE_LIMIT_WAIT:
                    waited += delay
                    log_debug(f"{method} {_display_path(url)}: rate limited, waiting {delay:.0f}s")
                    self.sleeper(delay)
                    continue
            elif status in RETRYABLE_STATUSES and is_read and attempt < MAX_RETRIES:
                attempt += 1
                log_debug(f"{method} {_display_path(url)}: HTTP {status}, retry {attempt}")
                self.sleeper(backoff_seconds(attempt))
                continue
            return response

    def paginate(self, path: str, params: dict | None = None, *, limit: int | None = None, offset: int = 0,
                 page_size: int = MAX_PAGE_SIZE) -> Iterator[dict]:
        """Yields the items of an OData collection: follows @odata.nextLink when Microsoft sends one,
        otherwise asks $top/$skip pages until a short page; stops on repeated links or pages."""
        url, skip, remaining = path, offset, limit
        seen_links: set[str] = set()
        previous_first: Any = None
        for _ in range(MAX_PAGES):
            top = page_size if remaining is None else min(page_size, remaining)
            if top <= 0:
                return
            page_params = {**(params or {}), "$top": top, "$skip": skip} if url == path else None
            body = self.request("GET", url, params=page_params) or {}
            items = body.get("value") or []
            first = items[0].get("id", json.dumps(items[0], sort_keys=True)) if items else None
            if items and first == previous_first:
                log_debug(f"GET {path}: the same page came back twice; stopping")
                return
            previous_first = first
            taken = items if remaining is None else items[:remaining]
            yield from taken
            if remaining is not None:
                remaining -= len(taken)
            next_link = body.get("@odata.nextLink")
            if next_link:
                if next_link in seen_links:
                    return
                seen_links.add(next_link)
                url = next_link
                continue
            if len(items) < top:
                return
            skip += len(items)
        log_debug(f"GET {path}: stopped after {MAX_PAGES} pages")

    def download(self, url: str) -> bytes:
        """Fetches a short-lived download link (no bearer token: the link carries its own signature)."""
        try:
            response = self.session.get(url, verify=self.verify, proxies=self.proxies, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ApiError(connection_error_message(exc, url)) from exc
        if not response.ok:
            raise ApiError(f"Downloading {urlparse(url).netloc}{urlparse(url).path} failed with HTTP "
                           f"{response.status_code}. The link may have expired; request a new one.")
        return response.content

    # ---- endpoints ---------------------------------------------------------------------------

    def list_alerts(self, *, odata_filter: str | None = None, limit: int | None = None, offset: int = 0,
                    expand_evidence: bool = False) -> list[dict]:
        params = {"$filter": odata_filter} if odata_filter else {}
        if expand_evidence:
            params["$expand"] = "evidence"
        return list(self.paginate("alerts", params, limit=limit, offset=offset))

    def list_machines(self, *, odata_filter: str | None = None, limit: int | None = None,
                      offset: int = 0) -> list[dict]:
        params = {"$filter": odata_filter} if odata_filter else {}
        return list(self.paginate("machines", params, limit=limit, offset=offset))

    # ---- machines and machine actions (endpoints) ----

    # ---- alerts and investigations (endpoints) ----


def _quote_odata(value: str, safe: str = "", encoding: str | None = None, errors: str | None = None) -> str:
    return quote(value, safe="$'(),:/", encoding=encoding, errors=errors)


def _display_path(url: str) -> str:
    path = urlparse(url).path
    return path[path.find("/api/") + 4:] if "/api/" in path else path


# ============================================================================================
# 5. Helpers: arguments, OData, output mapping, entries
# ============================================================================================


def argToBoolean(value: Any) -> bool:  # noqa: N802 - the platform's name
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "yes", "1"):
        return True
    if str(value).strip().lower() in ("false", "no", "0", "", "none"):
        return False
    raise ArgumentError(f"'{value}' is not a boolean; use true or false.")


def arg_to_bool(value: Any, name: str, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    try:
        return argToBoolean(value)
    except ArgumentError:
        raise ArgumentError(f"{name} must be true or false (got '{value}').") from None


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
    match = RELATIVE_TIME.match(text)
    if match:
        seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()]
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
    try:
        parsed = parse_iso_datetime(text)
    except ValueError:
        raise ArgumentError(f"{name} must be an ISO 8601 time such as 2024-05-01T10:00:00Z or a relative time "
                            f"such as '3 days' (got '{value}').") from None
    return parsed


def parse_iso_datetime(text: str) -> datetime:
    """Parses Microsoft's timestamps, which carry up to 7 fractional digits, into aware UTC datetimes."""
    text = text.strip().replace(" ", "T", 1) if re.match(r"^\d{4}-\d\d-\d\d \d", text.strip()) else text.strip()
    text = re.sub(r"[Zz]$", "+00:00", text)
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def format_datetime(value: datetime) -> str:
    """UTC in the form Microsoft's OData filters accept: 2024-05-01T10:00:00.123Z."""
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


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
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ArgumentError(f"{name} must be an IPv4 or IPv6 address (got '{value}').") from None


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
    """Builds a `$filter` from clauses joined by `and`, escaping every literal; fields are checked
    against the ones the endpoint supports so a typo fails here, not at Microsoft."""

    OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")

    def __init__(self, fields: Iterable[str] | None = None):
        self.fields = frozenset(fields) if fields is not None else None
        self.clauses: list[str] = []

    def _field(self, name: str) -> str:
        if self.fields is not None and name not in self.fields:
            raise ValueError(f"'{name}' cannot be filtered on here; supported: {', '.join(sorted(self.fields))}")
        return name

    def compare(self, name: str, operator: str, value: Any) -> ODataFilter:
        if operator not in self.OPERATORS:
            raise ValueError(f"unsupported OData operator {operator}")
        if value is not None and value != "":
            self.clauses.append(f"{self._field(name)} {operator} {odata_literal(value)}")
        return self

    def eq(self, name: str, value: Any) -> ODataFilter:
        return self.compare(name, "eq", value)

    def one_of(self, name: str, values: Iterable[Any]) -> ODataFilter:
        """`name eq v` for one value, `name in (v1, v2)` for several; nothing for none."""
        values = [v for v in values if v is not None and v != ""]
        if len(values) == 1:
            return self.eq(name, values[0])
        if values:
            self.clauses.append(f"{self._field(name)} in ({', '.join(odata_literal(v) for v in values)})")
        return self

    def startswith_any(self, name: str, prefixes: Iterable[str]) -> ODataFilter:
        parts = [f"startswith({self._field(name)},{odata_literal(p)})" for p in prefixes if p]
        if parts:
            self.clauses.append(parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")")
        return self

    def any_equals(self, collection: str, value: Any, member: str | None = None) -> ODataFilter:
        """`collection/any(x: x eq v)`, or `x/member eq v` for collections of objects."""
        if value is not None and value != "":
            target = f"x/{member}" if member else "x"
            self.clauses.append(f"{self._field(collection)}/any(x: {target} eq {odata_literal(value)})")
        return self

    def build(self) -> str | None:
        return " and ".join(self.clauses) or None


# Output mapping is data: per entity, Microsoft's camelCase field -> the context key playbooks read.
# A value of (key, entity) maps a nested object or list of objects with that entity's table.
ENTITY_FIELDS: dict[str, dict[str, Any]] = {
    # ---- machines and machine actions (entities) ----
    # ---- alerts and investigations (entities) ----
}


def to_context(record: dict | None, entity: str) -> dict:
    """Maps one API record to context keys with the entity's field table; unknown fields are dropped."""
    if not record:
        return {}
    mapped: dict[str, Any] = {}
    for api_name, target in ENTITY_FIELDS[entity].items():
        if api_name not in record:
            continue
        value = record[api_name]
        if isinstance(target, tuple):
            key, nested = target
            if isinstance(value, list):
                value = [to_context(item, nested) if isinstance(item, dict) else item for item in value]
            elif isinstance(value, dict):
                value = to_context(value, nested)
            mapped[key] = value
        else:
            mapped[target] = value
    return mapped


def context_key(path: str, key_field: str | None = "ID") -> str:
    return f"{path}(val.{key_field} && val.{key_field} == obj.{key_field})" if key_field else path


def markdown_table(title: str, rows: list[dict] | dict, headers: list[str] | None = None) -> str:
    """A markdown table, as the War Room shows it; nested values are shown as compact JSON."""
    rows = [rows] if isinstance(rows, dict) else rows
    lines = [f"### {title}"] if title else []
    if not rows:
        return "\n".join([*lines, "**No entries.**"])
    headers = headers or list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            value = ", ".join(map(str, value)) if isinstance(value, list) and all(
                not isinstance(v, (dict, list)) for v in value) else json.dumps(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines.append("|" + "|".join(headers) + "|")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("|" + "|".join(cell(row.get(h)) for h in headers) + "|" for row in rows)
    return "\n".join(lines)


@dataclass
class ScheduledCommand:
    """Asks the platform to run `command` again with `args` after `next_run` seconds."""

    command: str
    next_run: int
    args: dict
    timeout: int


@dataclass
class CommandResult:
    readable: str
    outputs: dict = field(default_factory=dict)  # context key (with merge rule) -> value
    raw: Any = None
    scheduled: ScheduledCommand | None = None

    def to_entry(self) -> dict:
        entry = {"Type": 1, "ContentsFormat": "json", "Contents": self.raw if self.raw is not None else {},
                 "HumanReadable": self.readable, "ReadableContentsFormat": "markdown",
                 "EntryContext": self.outputs}
        if self.scheduled:
            entry.update(PollingCommand=self.scheduled.command, NextRun=str(self.scheduled.next_run),
                         PollingArgs=self.scheduled.args, Timeout=str(self.scheduled.timeout))
        return entry


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


# ============================================================================================
# 6. Commands
# ============================================================================================

# ---- authentication and connectivity ----------------------------------------------------------


def check_connection(client: Client) -> None:
    """One cheap call that needs a token and an API permission."""
    client.list_alerts(limit=1)


def test_module_command(client: Client, args: dict) -> str:
    if client.provider.flow == FLOW_AUTH_CODE:
        # The Test button's run does not keep the integration context, so exchanging the one-time
        # code here would burn it. Explain the steps instead.
        raise ConfigurationError("The Test button cannot be used with the Authorization Code flow, because the "
                                 "one-time code would be consumed without saving the refresh token. "
                                 + AUTH_CODE_STEPS)
    check_connection(client)
    return "ok"


def test_connection_command(client: Client, args: dict) -> CommandResult:
    check_connection(client)
    return CommandResult(readable="✅ Success! The integration reached the Defender API with a valid token.")


def generate_login_url_command(client: Client, args: dict) -> CommandResult:
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


def auth_reset_command(client: Client, args: dict) -> CommandResult:
    client.provider.reset()
    return CommandResult(readable="Authorization was reset: stored access and refresh tokens were removed. "
                                  "Update the credentials if needed, then run !microsoft-atp-test (or press Test).")


def list_auth_permissions_command(client: Client, args: dict) -> CommandResult:
    claims = jwt_claims(client.provider.get_token())
    granted = set(claims.get("roles") or []) | set(str(claims.get("scp") or "").split())
    blocked: dict[str, list[str]] = {}
    for name, spec in COMMANDS.items():
        if spec.roles and not granted & set(spec.roles):
            blocked.setdefault(" or ".join(spec.roles), []).append(name)
    rows = [{"Missing permission": roles, "Commands it blocks": ", ".join(sorted(commands))}
            for roles, commands in sorted(blocked.items())]
    readable = markdown_table("Permissions", [{"Permission": role} for role in sorted(granted)])
    readable += "\n\n" + (markdown_table("Missing permissions", rows) if rows
                          else "All commands of this integration are permitted.")
    return CommandResult(readable=readable, raw={"roles": sorted(granted), "missing": rows})


# ---- machines and machine actions (commands) ----------------------------------------------------


# ---- alerts and investigations (commands) ----------------------------------------------------------


# ---- fetch incidents ---------------------------------------------------------------------------------


# ============================================================================================
# 7. COMMANDS table
# ============================================================================================


@dataclass(frozen=True)
class Command:
    func: Callable[[Client, dict], Any]
    roles: tuple[str, ...] = ()  # any one of these application permissions allows the command
    takes_params: bool = False  # fetch-incidents reads the instance parameters, not arguments


ALERT_READ = ("Alert.Read.All", "Alert.ReadWrite.All")

COMMANDS: dict[str, Command] = {
    "test-module": Command(test_module_command, ALERT_READ),
    "microsoft-atp-test": Command(test_connection_command, ALERT_READ),
    "microsoft-atp-generate-login-url": Command(generate_login_url_command),
    "microsoft-atp-auth-reset": Command(auth_reset_command),
    "microsoft-atp-list-auth-permissions": Command(list_auth_permissions_command),
    # ---- machines and machine actions (table) ----
    # ---- alerts and investigations (table) ----
}


# ============================================================================================
# 8. main()
# ============================================================================================


def build_client(params: dict, session: requests.Session | None = None,
                 sleeper: Callable[[float], None] | None = None) -> Client:
    session = session or requests.Session()
    settings = auth_settings_from_params(params)
    provider = build_token_provider(settings, session)
    return Client(settings.cloud.api_base, BearerAuth(provider), verify=settings.verify, proxies=settings.proxies,
                  session=session, sleeper=sleeper)


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


def main() -> None:
    command = demisto.command()
    log_debug(f"Command being called is {command}")
    try:
        spec = COMMANDS.get(command)
        if spec is None:
            raise IntegrationError(f"Command '{command}' is not implemented by {INTEGRATION_NAME}.")
        params = demisto.params()
        client = build_client(params)
        return_results(spec.func(client, params if spec.takes_params else demisto.args()))
    except IntegrationError as exc:
        return_error(REDACT(str(exc)))
    except Exception as exc:  # never a traceback in the War Room
        demisto.debug(REDACT(f"{command} failed: {type(exc).__name__}: {exc}"))
        return_error(REDACT(f"Failed to execute {command}: {type(exc).__name__}: {exc}"))


if __name__ in ("__main__", "__builtin__", "builtins"):
    main()

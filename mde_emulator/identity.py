"""Microsoft Entra ID, the Cortex XSOAR oproxy token service and the Azure IMDS managed-identity endpoint.

Issues RS256 access tokens shaped like Entra's v1 tokens (iss https://sts.windows.net/{tenant}/, appid,
roles or scp) and validates them for the Defender API. Errors carry Entra's AADSTS codes in Entra's JSON shape.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from .clock import Clock
from .web import PLAIN_JSON, ApiError, Request, Response, Route

if TYPE_CHECKING:
    from .server import Emulator

ALL_ROLES = [
    "Machine.Read.All", "Machine.ReadWrite.All", "Machine.Isolate", "Machine.RestrictExecution", "Machine.Scan",
    "Machine.CollectForensics", "Machine.Offboard", "Machine.StopAndQuarantine", "Machine.LiveResponse",
    "Alert.Read.All", "Alert.ReadWrite.All", "User.Read.All", "File.Read.All", "Ip.Read.All", "URL.Read.All",
    "Ti.ReadWrite", "Ti.ReadWrite.All", "AdvancedQuery.Read.All", "Software.Read.All", "Vulnerability.Read.All",
    "SecurityRecommendation.Read.All", "Library.Manage", "Score.Read.All", "RemediationTask.Read.All",
    "RemediationTasks.Read.All",
    "SecurityConfiguration.Read.All",
]
LIMITED_ROLES = ["Machine.Read.All", "Alert.Read.All"]
GRAPH_ROLES = ["ThreatHunting.Read.All"]  # what a Graph-audience token carries for apps that were granted it
MDE_APP_ID_URI = "https://securitycenter.onmicrosoft.com/windowsatpservice"
API_AUDIENCES = [
    MDE_APP_ID_URI, "https://api.securitycenter.microsoft.com", "https://api.security.microsoft.com",
    "https://securitycenter.onmicrosoft.us/windowsatpservice", "https://api-gcc.securitycenter.microsoft.us",
    "https://api-gov.securitycenter.microsoft.us",
]
GRAPH_RESOURCES = ["https://graph.microsoft.com", "https://graph.microsoft.us", "https://dod-graph.microsoft.us"]
KNOWN_RESOURCES = {r.lower() for r in API_AUDIENCES + GRAPH_RESOURCES + ["https://api.securitycenter.windows.com"]}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}
OPROXY_APP_NAME = "ms-defender-atp"
OPROXY_MAX_SKEW = 300
CODE_LIFETIME = 600
AUTHCODE_REDIRECT = "https://localhost/myapp"
AUTHCODE_USER = "analyst@contoso.example"


class EntraError(Exception):
    """A token-endpoint error in Entra's shape."""

    def __init__(self, status: int, error: str, code: int, message: str):
        super().__init__(message)
        self.status, self.error, self.code, self.message = status, error, code, message

    def response(self, base_url: str, when: dt.datetime) -> Response:
        now = when.strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        body = {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.message} Trace ID: {trace} "
                                 f"Correlation ID: {correlation} Timestamp: {now}",
            "error_codes": [self.code], "timestamp": now, "trace_id": trace, "correlation_id": correlation,
            "error_uri": f"{base_url}/error?code={self.code}",
        }
        return Response.json(self.status, body, content_type=PLAIN_JSON)


@dataclass
class Client:
    name: str
    client_id: str
    roles: list[str]
    secret: str | None = None
    thumbprint: str | None = None  # SHA-1 of the certificate DER, upper-case hex
    public_key: object = None
    redirect_uri: str | None = None
    graph_roles: list[str] = field(default_factory=lambda: list(GRAPH_ROLES))
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    """Valid from a day ago for a year of real time (certificate validity stays off the emulator's clock)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class Identity:
    def __init__(self, *, base_url: str, state_dir: Path, lifetime: Callable[[], int],
                 on_token: Callable[[str], None], clock: Clock):
        self.base_url = base_url
        self.clock = clock
        self.lifetime = lifetime
        self.on_token = on_token
        self.lock = threading.Lock()
        self.tenant_id = str(uuid.uuid4())
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signing_cert = _self_signed(self._signing_key, "mde-emulator token signing")
        self.kid = _b64url(signing_cert.fingerprint(hashes.SHA1()))  # Entra's x5t is a SHA-1 thumbprint
        self._public_key = self._signing_key.public_key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._public_key))
        self.jwks = {"keys": [{**jwk, "use": "sig", "kid": self.kid, "x5t": self.kid,
                               "x5c": [base64.b64encode(signing_cert.public_bytes(serialization.Encoding.DER))
                                       .decode()],
                               "issuer": f"{base_url}/{self.tenant_id}/v2.0"}]}

        def new_id() -> str:
            return str(uuid.uuid4())

        cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(cert_key, "mde-emulator certificate client")
        self.cert_key_path = state_dir / "client-key.pem"
        self.cert_path = state_dir / "client-cert.pem"
        _write_private(self.cert_key_path, cert_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        _write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        thumbprint = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
        self.clients = {c.client_id: c for c in [
            Client("full", new_id(), list(ALL_ROLES), secret=secrets.token_urlsafe(30)),
            Client("limited", new_id(), list(LIMITED_ROLES), secret=secrets.token_urlsafe(30), graph_roles=[]),
            # granted the Defender API's AdvancedQuery.Read.All but not Graph's ThreatHunting.Read.All
            Client("defender-hunting", new_id(), list(ALL_ROLES), secret=secrets.token_urlsafe(30), graph_roles=[]),
            Client("certificate", new_id(), list(ALL_ROLES), thumbprint=thumbprint, public_key=cert.public_key()),
            Client("authcode", new_id(), list(ALL_ROLES), secret=secrets.token_urlsafe(30),
                   redirect_uri=AUTHCODE_REDIRECT),
        ]}
        self.user_oid = new_id()
        self.mi_system_client_id = new_id()
        self.mi_user_client_id = new_id()
        self.oproxy_app_id = new_id()
        self.oproxy_registration_id = new_id()
        self.oproxy_token = secrets.token_urlsafe(24)
        self.oproxy_key = secrets.token_bytes(32)
        self._codes: dict[str, dict] = {}
        self._refresh_tokens: dict[str, dict] = {}
        self._used_refresh_tokens: set[str] = set()

    # -- ready-file data ---------------------------------------------------------------------------------------
    def client(self, name: str) -> Client:
        return next(c for c in self.clients.values() if c.name == name)

    def ready_info(self) -> dict:
        full, limited, cert, authcode = (self.client(n) for n in ("full", "limited", "certificate", "authcode"))
        return {
            "tenant_id": self.tenant_id,
            "clients": {
                "full": {"client_id": full.client_id, "client_secret": full.secret, "roles": full.roles},
                "limited": {"client_id": limited.client_id, "client_secret": limited.secret,
                            "roles": limited.roles},
                "defender-hunting": {"client_id": self.client("defender-hunting").client_id,
                                     "client_secret": self.client("defender-hunting").secret,
                                     "roles": self.client("defender-hunting").roles, "graph_roles": []},
                "certificate": {"client_id": cert.client_id, "thumbprint": cert.thumbprint,
                                "private_key_path": str(self.cert_key_path.resolve()),
                                "certificate_path": str(self.cert_path.resolve()), "roles": cert.roles},
                "authcode": {"client_id": authcode.client_id, "client_secret": authcode.secret,
                             "redirect_uri": authcode.redirect_uri, "username": AUTHCODE_USER,
                             "roles": authcode.roles},
            },
            "oproxy": {"registration_id": self.oproxy_registration_id, "token": self.oproxy_token,
                       "key": base64.b64encode(self.oproxy_key).decode()},
            "managed_identity": {"user_assigned_client_id": self.mi_user_client_id},
        }

    # -- tokens ------------------------------------------------------------------------------------------------
    def issue_access_token(self, *, appid: str, audience: str, roles: list[str] | None = None,
                           scp: list[str] | None = None, oid: str, acr: str = "1", user: str | None = None) -> str:
        now = int(self.clock.now())
        claims = {
            "aud": audience, "iss": f"https://sts.windows.net/{self.tenant_id}/", "iat": now, "nbf": now,
            "exp": now + self.lifetime(), "aio": _b64url(secrets.token_bytes(24)), "appid": appid,
            "appidacr": acr, "idp": f"https://sts.windows.net/{self.tenant_id}/", "oid": oid,
            "rh": "0.AAAA" + _b64url(secrets.token_bytes(16)) + ".", "sub": oid, "tid": self.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)), "ver": "1.0",
        }
        if roles is not None:
            claims["roles"] = roles
        if scp is not None:
            claims["scp"] = " ".join(scp)
        if user:
            claims.update(upn=user, unique_name=user, name="Test Analyst", amr=["pwd"])
        return jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid})

    def validate_api_token(self, authorization: str | None, graph: bool = False) -> dict:
        """Claims of a valid bearer token for the Defender API (or Microsoft Graph), else ApiError 401."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "Unauthorized", "Authorization header is missing or is not a Bearer token.")
        token = authorization[7:].strip()
        expected = GRAPH_RESOURCES if graph else API_AUDIENCES
        audiences = expected + [a + "/" for a in expected]
        try:
            # PyJWT checks times against the real clock, so exp/nbf are checked here against the emulator's.
            claims = jwt.decode(token, self._public_key, algorithms=["RS256"], audience=audiences,
                                issuer=f"https://sts.windows.net/{self.tenant_id}/",
                                options={"require": ["exp", "iat", "aud", "iss"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except jwt.InvalidAudienceError:
            raise ApiError(401, "Unauthorized", "The access token has an invalid audience for this API.") from None
        except jwt.PyJWTError as exc:
            raise ApiError(401, "Unauthorized", f"The access token is invalid: {exc}.") from None
        now = self.clock.now()
        if not isinstance(claims["exp"], int) or claims["exp"] <= now:
            raise ApiError(401, "Unauthorized", "The access token has expired.")
        if isinstance(claims.get("nbf"), int) and claims["nbf"] > now:
            raise ApiError(401, "Unauthorized", "The access token is not yet valid.")
        return claims

    # -- OIDC discovery ----------------------------------------------------------------------------------------
    def _check_tenant(self, tenant: str, error: str = "invalid_request") -> None:
        if tenant == self.tenant_id or tenant.lower() in ("organizations", "common"):
            return
        raise EntraError(400, error, 90002,
                         f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                         "signing into the correct cloud. Check with your subscription administrator, this may "
                         "happen if there are no active subscriptions for the tenant.")

    def discovery(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        try:
            self._check_tenant(tenant, "invalid_tenant")
        except EntraError as exc:
            return exc.response(self.base_url, self.clock.utcnow())
        b = f"{self.base_url}/{tenant}"
        issuer_tenant = self.tenant_id if tenant == self.tenant_id else "{tenantid}"
        doc = {
            "token_endpoint": f"{b}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{b}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.base_url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base_url}/oidc/userinfo",
            "authorization_endpoint": f"{b}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{b}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{b}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                                 "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                                 "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": f"{b}/kerberos",
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return Response.json(200, doc, content_type=PLAIN_JSON)

    def instance_discovery(self, request: Request) -> Response:
        endpoint = request.query.get("authorization_endpoint", "")
        parts = urlsplit(endpoint).path.strip("/").split("/")
        tenant = parts[0] if parts and parts[0] else "common"
        host = urlsplit(self.base_url).netloc
        body = {
            "tenant_discovery_endpoint": f"{self.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }
        return Response.json(200, body, content_type=PLAIN_JSON)

    def keys(self, request: Request) -> Response:
        return Response.json(200, self.jwks, content_type=PLAIN_JSON)

    # -- token endpoint ----------------------------------------------------------------------------------------
    def token(self, request: Request) -> Response:
        try:
            return self._token(request)
        except EntraError as exc:
            return exc.response(self.base_url, self.clock.utcnow())

    def _token(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        self._check_tenant(tenant)
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}
        v1 = request.path.lower().endswith("/oauth2/token")
        grant = form.get("grant_type")
        if not grant:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'grant_type'.")
        client, acr = self._authenticate_client(request, form, tenant)
        if grant == "client_credentials":
            self.on_token("client_credentials")
            if v1:
                resource = form.get("resource") or ""
                if not resource:
                    raise EntraError(400, "invalid_request", 900144,
                                     "The request body must contain the following parameter: 'resource'.")
            else:
                scope = form.get("scope")
                if not scope:
                    raise EntraError(400, "invalid_request", 900144,
                                     "The request body must contain the following parameter: 'scope'.")
                if not scope.strip().endswith("/.default") or " " in scope.strip():
                    raise EntraError(400, "invalid_scope", 1002012,
                                     f"The provided value for scope {scope} is not valid. Client credential flows "
                                     "must have a scope value with /.default suffixed to the resource identifier "
                                     "(application ID URI).")
                resource = scope.strip()[: -len("/.default")]
            self._check_resource(resource, tenant)
            token = self.issue_access_token(appid=client.client_id, audience=resource,
                                            roles=self.roles_for(client.roles, client.graph_roles, resource),
                                            oid=client.object_id, acr=acr)
            body = {"token_type": "Bearer", "expires_in": self.lifetime(), "ext_expires_in": self.lifetime(),
                    "access_token": token}
            if v1:
                body.update(resource=resource, expires_on=str(int(self.clock.now()) + self.lifetime()))
            return Response.json(200, body, content_type=PLAIN_JSON)
        if grant == "authorization_code":
            self.on_token("authorization_code")
            return self._redeem_code(client, acr, form)
        if grant == "refresh_token":
            self.on_token("refresh_token")
            return self._redeem_refresh_token(client, acr, form)
        raise EntraError(400, "unsupported_grant_type", 70003,
                         f"The app requested an unsupported grant type '{grant}'.")

    @staticmethod
    def roles_for(defender_roles: list[str], graph_roles: list[str], resource: str) -> list[str]:
        """A token carries the permissions granted on its own resource: Graph's for Graph, Defender's otherwise."""
        is_graph = resource.rstrip("/").lower() in {r.lower() for r in GRAPH_RESOURCES}
        return list(graph_roles if is_graph else defender_roles)

    def _check_resource(self, resource: str, tenant: str) -> None:
        if resource.rstrip("/").lower() not in KNOWN_RESOURCES:
            raise EntraError(400, "invalid_resource", 500011,
                             f"The resource principal named {resource} was not found in the tenant named "
                             f"{tenant}. This can happen if the application has not been installed by the "
                             "administrator of the tenant or consented to by any user in the tenant. You might "
                             "have sent your authentication request to the wrong tenant.")

    def _authenticate_client(self, request: Request, form: dict, tenant: str) -> tuple[Client, str]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                pass
        if not client_id:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'client_id'.")
        client = self.clients.get(client_id)
        if client is None:
            raise EntraError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in the directory "
                             f"'{tenant}'. This can happen if the application has not been installed by the "
                             "administrator of the tenant or consented to by any user in the tenant. You may "
                             "have sent your authentication request to the wrong tenant.")
        if form.get("client_assertion") or form.get("client_assertion_type"):
            self._check_assertion(client, form, tenant)
            return client, "2"
        if secret:
            if client.secret is None or not hmac.compare_digest(secret, client.secret):
                raise EntraError(401, "invalid_client", 7000215,
                                 "Invalid client secret provided. Ensure the secret being sent in the request is "
                                 "the client secret value, not the client secret ID, for a secret added to app "
                                 f"'{client_id}'.")
            return client, "1"
        raise EntraError(401, "invalid_client", 7000218,
                         "The request body must contain the following parameter: 'client_assertion' or "
                         "'client_secret'.")

    def _check_assertion(self, client: Client, form: dict, tenant: str) -> None:
        def bad(reason: str, code: int = 700027) -> EntraError:
            return EntraError(401, "invalid_client", code, reason)

        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise EntraError(400, "invalid_request", 700025 if not form.get("client_assertion_type") else 50027,
                             f"client_assertion_type must be '{ASSERTION_TYPE}'.")
        assertion = form.get("client_assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise bad("Client assertion contains an invalid signature. [Reason - The assertion is not a valid "
                      "JWT.]") from None
        x5t = str(header.get("x5t", "")).rstrip("=")
        expected = _b64url(bytes.fromhex(client.thumbprint)) if client.thumbprint else None
        if client.public_key is None or x5t != expected:
            raise bad(f"Client assertion contains an invalid signature. [Reason - The key was not found., "
                      f"Thumbprint of key used by client: '{_thumbprint_hex(x5t)}', Please visit the Azure Portal, "
                      f"Graph Explorer or directly use MS Graph to see configured keys for app Id "
                      f"'{client.client_id}'.]")
        audiences = [f"{self.base_url}/{t}/oauth2/{v}token" for t in {tenant, self.tenant_id}
                     for v in ("v2.0/", "")]
        try:
            claims = jwt.decode(assertion, client.public_key, algorithms=["RS256", "PS256"], audience=audiences,
                                options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise bad("Client assertion is not within its valid time range.", 700024) from None
        except jwt.InvalidAudienceError:
            raise bad("Client assertion audience claim does not match Realm issuer.", 700027) from None
        except jwt.PyJWTError as exc:
            raise bad(f"Client assertion contains an invalid signature. [Reason - {exc}]") from None
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise bad("Client assertion application identifier doesn't match 'client_id' parameter.", 700021)

    def _resource_of(self, scope: str) -> str:
        for item in scope.split():
            if item.lower() not in RESERVED_SCOPES:
                return item.rsplit("/", 1)[0] if "/" in item.split("://", 1)[-1] else item
        return "https://graph.microsoft.com"

    def _user_tokens(self, client: Client, acr: str, scope: str, nonce: str | None) -> Response:
        resource = self._resource_of(scope)
        self._check_resource(resource, self.tenant_id)
        lifetime = self.lifetime()
        body = {"token_type": "Bearer", "scope": scope, "expires_in": lifetime, "ext_expires_in": lifetime,
                "access_token": self.issue_access_token(appid=client.client_id, audience=resource,
                                                        scp=self.roles_for(client.roles, client.graph_roles,
                                                                           resource), oid=self.user_oid, acr=acr,
                                                        user=AUTHCODE_USER)}
        words = {s.lower() for s in scope.split()}
        if "offline_access" in words:
            rt = "1.AAAA" + secrets.token_urlsafe(48)
            with self.lock:
                self._refresh_tokens[rt] = {"client_id": client.client_id, "scope": scope}
            body["refresh_token"] = rt
        if "openid" in words:
            now = int(self.clock.now())
            id_claims = {"aud": client.client_id, "iss": f"{self.base_url}/{self.tenant_id}/v2.0", "iat": now,
                         "nbf": now, "exp": now + 3600, "name": "Test Analyst", "oid": self.user_oid,
                         "preferred_username": AUTHCODE_USER, "sub": _b64url(hashlib.sha256(
                             self.user_oid.encode()).digest()[:24]), "tid": self.tenant_id, "ver": "2.0"}
            if nonce:
                id_claims["nonce"] = nonce
            body["id_token"] = jwt.encode(id_claims, self._signing_key, algorithm="RS256",
                                          headers={"kid": self.kid})
            body["client_info"] = _b64url(json.dumps({"uid": self.user_oid, "utid": self.tenant_id}).encode())
        return Response.json(200, body, content_type=PLAIN_JSON)

    def _redeem_code(self, client: Client, acr: str, form: dict) -> Response:
        code = form.get("code")
        if not code:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'code'.")
        with self.lock:
            grant = self._codes.get(code)
            if grant is None:
                raise EntraError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            if grant["used"]:
                raise EntraError(400, "invalid_grant", 54005,
                                 "OAuth2 Authorization code was already redeemed, please retry with a new valid "
                                 "code or use an existing refresh token.")
            if self.clock.now() - grant["issued"] > CODE_LIFETIME:
                raise EntraError(400, "invalid_grant", 70008,
                                 "The provided authorization code or refresh token has expired due to inactivity. "
                                 "Send a new interactive authorization request for this user and resource.")
            if grant["client_id"] != client.client_id:
                raise EntraError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
            if form.get("redirect_uri") != grant["redirect_uri"]:
                raise EntraError(400, "invalid_grant", 500112,
                                 f"The reply address '{form.get('redirect_uri')}' does not match the reply "
                                 f"address '{grant['redirect_uri']}' provided when requesting Authorization code.")
            if grant.get("code_challenge"):
                verifier = form.get("code_verifier", "")
                expected = (_b64url(hashlib.sha256(verifier.encode()).digest())
                            if grant.get("code_challenge_method", "plain").upper() == "S256" else verifier)
                if not hmac.compare_digest(expected, grant["code_challenge"]):
                    raise EntraError(400, "invalid_grant", 501481,
                                     "The Code_Verifier does not match the code_challenge supplied in the "
                                     "authorization request.")
            grant["used"] = True
        return self._user_tokens(client, acr, form.get("scope") or grant["scope"], grant.get("nonce"))

    def _redeem_refresh_token(self, client: Client, acr: str, form: dict) -> Response:
        rt = form.get("refresh_token")
        if not rt:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'refresh_token'.")
        with self.lock:
            if rt in self._used_refresh_tokens:
                raise EntraError(400, "invalid_grant", 70000,
                                 "Provided grant is invalid or malformed. The refresh token was already used.")
            grant = self._refresh_tokens.get(rt)
            if grant is None:
                raise EntraError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            if grant["client_id"] != client.client_id:
                raise EntraError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
            del self._refresh_tokens[rt]
            self._used_refresh_tokens.add(rt)
        return self._user_tokens(client, acr, form.get("scope") or grant["scope"], None)

    # -- authorize ---------------------------------------------------------------------------------------------
    def authorize(self, request: Request) -> Response:
        q = request.query
        try:
            self._check_tenant(request.params["tenant"])
            client = self.clients.get(q.get("client_id", ""))
            if client is None:
                raise EntraError(400, "unauthorized_client", 700016,
                                 f"Application with identifier '{q.get('client_id', '')}' was not found in the "
                                 f"directory '{request.params['tenant']}'.")
            redirect = q.get("redirect_uri") or client.redirect_uri
            if not redirect or redirect != client.redirect_uri:
                raise EntraError(400, "invalid_request", 50011,
                                 f"The redirect URI '{redirect}' specified in the request does not match the "
                                 f"redirect URIs configured for the application '{client.client_id}'. Make sure "
                                 "the redirect URI sent in the request matches one added to your application in "
                                 "the Azure portal.")
        except EntraError as exc:
            page = (f"<html><head><title>Sign in to your account</title></head><body><h1>Sorry, but we're "
                    f"having trouble signing you in.</h1><p>AADSTS{exc.code}: {html.escape(exc.message)}</p>"
                    "</body></html>")
            return Response(400, page.encode(), {"Content-Type": "text/html; charset=utf-8"})
        params: dict[str, str] = {}
        if q.get("response_type") != "code":
            params.update(error="unsupported_response_type",
                          error_description="AADSTS700054: response_type 'code' is required for this flow.")
        elif not q.get("scope"):
            params.update(error="invalid_request", error_description="AADSTS900144: The request body must "
                                                                      "contain the following parameter: 'scope'.")
        else:
            code = "1.AXkA" + secrets.token_urlsafe(96)
            with self.lock:
                self._codes[code] = {"client_id": client.client_id, "redirect_uri": redirect, "scope": q["scope"],
                                     "nonce": q.get("nonce"), "code_challenge": q.get("code_challenge"),
                                     "code_challenge_method": q.get("code_challenge_method"),
                                     "issued": self.clock.now(), "used": False}
            params["code"] = code
        if "state" in q:
            params["state"] = q["state"]
        params["session_state"] = str(uuid.uuid4())
        if q.get("response_mode") == "form_post":
            inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
                             for k, v in params.items())
            page = (f'<html><body onload="document.forms[0].submit()"><form method="POST" '
                    f'action="{html.escape(redirect)}">{inputs}</form></body></html>')
            return Response(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})
        location = redirect + ("&" if "?" in redirect else "?") + urlencode(params)
        return Response(302, b"", {"Location": location})

    # -- oproxy ------------------------------------------------------------------------------------------------
    def oproxy(self, request: Request) -> Response:
        def error(status: int, title: str, detail: str) -> Response:
            return Response.json(status, {"title": title, "detail": detail}, content_type=PLAIN_JSON)

        self.on_token("oproxy")
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error(400, "Bad request", "The request body must be a JSON object.")
        missing = [k for k in ("app_name", "registration_id", "encrypted_token") if not body.get(k)]
        if missing:
            return error(400, "Bad request", f"Missing required fields: {', '.join(missing)}")
        if body["app_name"] != OPROXY_APP_NAME:
            return error(400, "Bad request", f"Unknown application '{body['app_name']}'.")
        if body["registration_id"] != self.oproxy_registration_id:
            return error(401, "Unauthorized", "Registration not found. Please make sure you entered the ID "
                                              "correctly, or re-register the application.")
        try:
            raw = base64.b64decode(body["encrypted_token"], validate=True)
            plaintext = AESGCM(self.oproxy_key).decrypt(raw[:12], raw[12:], None).decode()
            stamp, _, token = plaintext.partition(":")
            issued = int(stamp)
        except (ValueError, InvalidTag):
            return error(400, "Bad request", "Failed decrypting the token. Please make sure the Key is correct.")
        if not hmac.compare_digest(token, self.oproxy_token):
            return error(401, "Unauthorized", "Invalid token. Please make sure you entered the Token correctly.")
        if abs(time.time() - issued) > OPROXY_MAX_SKEW:  # the client stamps with its own (real) clock
            return error(400, "Bad request", "The token is stale: its timestamp is more than 5 minutes away from "
                                             "the server's clock. Please check the system clock.")
        scope, resource = body.get("scope"), body.get("resource") or ""
        audience = resource.rstrip("/") or _oproxy_audience(scope)
        access = self.issue_access_token(appid=self.oproxy_app_id, audience=audience,
                                         roles=self.roles_for(ALL_ROLES, GRAPH_ROLES, audience),
                                         oid=self.oproxy_app_id)
        return Response.json(200, {"access_token": access, "expires_in": self.lifetime(), "refresh_token": ""},
                             content_type=PLAIN_JSON, headers={"Function-Execution-Id": secrets.token_hex(6)})

    # -- IMDS --------------------------------------------------------------------------------------------------
    def imds(self, request: Request) -> Response:
        def error(description: str, status: int = 400) -> Response:
            return Response.json(status, {"error": "invalid_request", "error_description": description},
                                 content_type=PLAIN_JSON)

        self.on_token("managed_identity")
        q = request.query
        if request.headers.get("metadata", "").lower() != "true":
            return error("Required metadata header not specified")
        if not q.get("api-version"):
            return error("Required query variable 'api-version' is missing")
        resource = q.get("resource")
        if not resource:
            return error("Required audience parameter not specified")
        if q.get("msi_res_id") or q.get("object_id") or q.get("mi_res_id"):
            return error("Identity not found")
        client_id = q.get("client_id")
        if client_id and client_id != self.mi_user_client_id:
            return error("Identity not found")
        client_id = client_id or self.mi_system_client_id
        lifetime = self.lifetime()
        now = int(self.clock.now())
        token = self.issue_access_token(appid=client_id, audience=resource,
                                        roles=self.roles_for(ALL_ROLES, GRAPH_ROLES, resource), oid=client_id,
                                        acr="2")
        return Response.json(200, {"access_token": token, "client_id": client_id, "expires_in": str(lifetime),
                                   "expires_on": str(now + lifetime), "ext_expires_in": str(lifetime),
                                   "not_before": str(now), "resource": resource, "token_type": "Bearer"},
                             content_type=PLAIN_JSON)


def _oproxy_audience(scope: str | None) -> str:
    """The oproxy's `scope`: none for the Defender API, "graph" or a Graph scope URL for Microsoft Graph."""
    if scope and (scope == "graph" or scope.split("/.default")[0].rstrip("/") in GRAPH_RESOURCES):
        return scope.split("/.default")[0].rstrip("/") if scope != "graph" else "https://graph.microsoft.com"
    return MDE_APP_ID_URI


def routes(emu: Emulator) -> list[Route]:
    i = emu.identity
    return [
        Route("GET", "/{tenant}/v2.0/.well-known/openid-configuration", i.discovery, family="token"),
        Route("GET", "/{tenant}/.well-known/openid-configuration", i.discovery, family="token"),
        Route("GET", "/common/discovery/instance", i.instance_discovery, family="token"),
        Route("GET", "/{tenant}/discovery/v2.0/keys", i.keys, family="token"),
        Route("GET", "/{tenant}/discovery/keys", i.keys, family="token"),
        Route("POST", "/{tenant}/oauth2/v2.0/token", i.token, family="token"),
        Route("POST", "/{tenant}/oauth2/token", i.token, family="token"),
        Route("GET", "/{tenant}/oauth2/v2.0/authorize", i.authorize, family="token"),
        Route("POST", "/oproxy/obtain-token", i.oproxy, family="oproxy"),
        Route("POST", "/obtain-token", i.oproxy, family="oproxy"),
        Route("GET", "/metadata/identity/oauth2/token", i.imds, family="imds"),
    ]


def _thumbprint_hex(x5t: str) -> str:
    try:
        return base64.urlsafe_b64decode(x5t + "=" * (-len(x5t) % 4)).hex().upper()
    except ValueError:
        return x5t

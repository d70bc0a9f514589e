"""Authentication: every flow, every cloud, token reuse and refresh, errors, legacy instances."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import requests
from conftest import (
    API,
    CLIENT_ID,
    CLIENT_SECRET,
    LOGIN,
    TENANT,
    client_credentials_params,
    form,
    make_jwt,
    mock_entra,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

import MicrosoftDefenderForEndpoint as mde

ALERTS_PROBE = "/alerts?%24top=1&%24skip=0"

CLOUD_CASES = [
    # endpoint type, login host, API base, scope
    ("Worldwide", LOGIN, "https://api.securitycenter.microsoft.com",
     "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"),
    ("EU Geo Proximity", LOGIN, "https://api-eu.securitycenter.microsoft.com",
     "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"),
    ("UK Geo Proximity", LOGIN, "https://api-uk.securitycenter.microsoft.com",
     "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"),
    ("US Geo Proximity", LOGIN, "https://api-us.securitycenter.microsoft.com",
     "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"),
    ("US GCC", LOGIN, "https://api-gcc.securitycenter.microsoft.us",
     "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"),
    ("US GCC-High", "https://login.microsoftonline.us", "https://api-gov.securitycenter.microsoft.us",
     "https://securitycenter.onmicrosoft.us/windowsatpservice/.default"),
    ("DoD", "https://login.microsoftonline.us", "https://api-gov.securitycenter.microsoft.us",
     "https://securitycenter.onmicrosoft.us/windowsatpservice/.default"),
]


@pytest.mark.parametrize("endpoint_type, login, api_base, scope", CLOUD_CASES)
def test_client_credentials_token_and_api_call_per_cloud(xsoar, requests_mock, endpoint_type, login, api_base, scope):
    token = make_jwt({"tid": TENANT})
    token_endpoint = mock_entra(requests_mock, login=login, token=token)
    alerts = requests_mock.get(f"{api_base}/api/alerts", json={"value": []})

    run = xsoar.run("test-module", params=client_credentials_params(endpoint_type=endpoint_type))

    assert run.results == ["ok"]
    assert token_endpoint.call_count == 1
    sent = form(token_endpoint.last_request)
    assert sent["grant_type"] == "client_credentials"
    assert sent["client_id"] == CLIENT_ID
    assert sent["client_secret"] == CLIENT_SECRET
    assert sent["scope"] == scope
    assert alerts.last_request.headers["Authorization"] == f"Bearer {token}"
    assert alerts.last_request.qs == {"$top": ["1"], "$skip": ["0"]}


def test_custom_endpoint_uses_server_url_and_login_override(xsoar, requests_mock):
    token_endpoint = mock_entra(requests_mock, login="https://login.example.test")
    alerts = requests_mock.get("https://mde.example.test/api/alerts", json={"value": []})
    params = client_credentials_params(endpoint_type="Custom", url="https://mde.example.test/",
                                       login_url="https://login.example.test")
    assert xsoar.run("test-module", params=params).results == ["ok"]
    assert token_endpoint.called and alerts.called


def test_custom_endpoint_without_url_names_the_parameter(xsoar):
    run = xsoar.run("test-module", params=client_credentials_params(endpoint_type="Custom"))
    assert "Server URL" in run.error


def test_token_is_reused_across_runs_until_it_expires(xsoar, requests_mock):
    token_endpoint = mock_entra(requests_mock, expires_in=3599)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    for _ in range(3):
        assert xsoar.run("microsoft-atp-test").errors == []
    assert token_endpoint.call_count == 1

    xsoar.clock.advance(3600)
    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_endpoint.call_count == 2


def test_changed_credentials_discard_the_stored_token(xsoar, requests_mock):
    token_endpoint = mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    xsoar.run("microsoft-atp-test")
    other = client_credentials_params(_auth_id_encrypted={"password": "ffffffff-0000-0000-0000-000000000000"})
    assert xsoar.run("microsoft-atp-test", params=other).errors == []
    assert token_endpoint.call_count == 2


def test_401_forces_one_refresh_and_one_retry(xsoar, requests_mock):
    first, second = make_jwt({"n": 1}), make_jwt({"n": 2})
    token_endpoint = mock_entra(requests_mock)
    token_endpoint = requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", [
        {"json": {"access_token": first, "expires_in": 3599, "token_type": "Bearer"}},
        {"json": {"access_token": second, "expires_in": 3599, "token_type": "Bearer"}}])
    alerts = requests_mock.get(f"{API}/alerts", [
        {"status_code": 401, "json": {"error": {"code": "Unauthorized", "message": "expired"}}},
        {"json": {"value": []}}])

    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_endpoint.call_count == 2
    assert [r.headers["Authorization"] for r in alerts.request_history] == [f"Bearer {first}", f"Bearer {second}"]
    assert xsoar.context["access_token"] == second


def test_second_401_is_an_error_with_a_hint(xsoar, requests_mock):
    mock_entra(requests_mock)
    alerts = requests_mock.get(f"{API}/alerts", status_code=401,
                               json={"error": {"code": "Unauthorized", "message": "Bad audience", "target": "c-1"}})
    run = xsoar.run("microsoft-atp-test")
    assert alerts.call_count == 2
    assert "HTTP 401 Unauthorized: Bad audience" in run.error
    assert "auth-reset" in run.error and "c-1" in run.error


ENTRA_ERRORS = [
    (401, "invalid_client", 7000215, "AADSTS7000215: Invalid client secret provided.", "client secret in Key is wrong"),
    (401, "invalid_client", 7000222, "AADSTS7000222: The provided client secret keys are expired.", "has expired"),
    (400, "unauthorized_client", 700016, "AADSTS700016: Application with identifier was not found.", "No application"),
    (400, "invalid_request", 90002, "AADSTS90002: Tenant not found.", "tenant was not found"),
    (400, "invalid_grant", 65001, "AADSTS65001: The user or administrator has not consented.", "Admin consent"),
]


@pytest.mark.parametrize("status, error, code, description, hint", ENTRA_ERRORS)
def test_entra_errors_say_what_to_fix_without_secrets(xsoar, requests_mock, status, error, code, description, hint):
    mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", status_code=status, json={
        "error": error, "error_codes": [code],
        "error_description": f"{description} Trace ID: abc Correlation ID: def Timestamp: 2024-01-01"})
    run = xsoar.run("microsoft-atp-test")
    assert f"AADSTS{code}" in run.error
    assert hint in run.error
    assert "Trace ID" not in run.error
    assert_no_secret(run, CLIENT_SECRET)


def assert_no_secret(run, *secrets: str) -> None:
    text = json.dumps(run.results) + "\n".join(run.logs)
    for secret in secrets:
        assert secret not in text


def test_missing_parameters_are_named(xsoar):
    params = client_credentials_params(credentials={"password": ""})
    assert "Key (client secret)" in xsoar.run("microsoft-atp-test", params=params).error
    params = client_credentials_params(_tenant_id_encrypted={"password": ""})
    assert "Token (tenant ID)" in xsoar.run("microsoft-atp-test", params=params).error


# ---- certificate credentials ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mde-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return cert, pem


def test_certificate_assertion_carries_x5t_and_no_secret(xsoar, requests_mock, certificate):
    cert, pem = certificate
    thumbprint = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - thumbprints are SHA-1 by definition
    spaced = ":".join(thumbprint[i:i + 2] for i in range(0, 40, 2)).lower()
    one_line_key = pem.replace("\n", " ")  # a PEM pasted into a one-line field
    token_endpoint = mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    params = client_credentials_params(credentials={"password": ""},
                                       creds_certificate={"identifier": spaced, "password": one_line_key})

    assert xsoar.run("microsoft-atp-test", params=params).errors == []

    sent = form(token_endpoint.last_request)
    assert "client_secret" not in sent
    assert sent["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header = jwt.get_unverified_header(sent["client_assertion"])
    assert header["alg"] == "RS256"
    assert header["x5t"].rstrip("=") == base64.urlsafe_b64encode(bytes.fromhex(thumbprint)).rstrip(b"=").decode()
    claims = jwt.decode(sent["client_assertion"], cert.public_key(), algorithms=["RS256"],
                        audience=f"{LOGIN}/{TENANT}/oauth2/v2.0/token")
    assert claims["iss"] == claims["sub"] == CLIENT_ID


def test_bad_thumbprint_is_a_configuration_error(xsoar, certificate):
    params = client_credentials_params(creds_certificate={"identifier": "not-hex", "password": certificate[1]})
    assert "Certificate Thumbprint must be" in xsoar.run("microsoft-atp-test", params=params).error


def test_private_key_newlines_are_restored():
    key = "-----BEGIN PRIVATE KEY----- " + "A" * 100 + " -----END PRIVATE KEY-----"
    restored = mde.normalize_private_key(key)
    assert restored.splitlines() == ["-----BEGIN PRIVATE KEY-----", "A" * 64, "A" * 36, "-----END PRIVATE KEY-----"]


# ---- authorization code ------------------------------------------------------------------------

REDIRECT = "https://localhost/my app"


def auth_code_params(code: str = "") -> dict:
    return client_credentials_params(auth_flow="Authorization Code", redirect_uri=REDIRECT,
                                     auth_code={"password": code})


def test_login_url_is_encoded_and_carries_state(xsoar):
    run = xsoar.run("microsoft-atp-generate-login-url", params=auth_code_params())
    url = run.entry["Contents"]["login_url"]
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert f"{parsed.scheme}://{parsed.netloc}{parsed.path}" == f"{LOGIN}/{TENANT}/oauth2/v2.0/authorize"
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [REDIRECT]
    assert query["response_type"] == ["code"]
    assert query["scope"] == ["offline_access https://securitycenter.onmicrosoft.com/windowsatpservice/.default"]
    assert query["state"] == [xsoar.context["login_state"]]
    assert " " not in url
    assert f"[login URL]({url})" in run.entry["HumanReadable"]


def test_code_is_exchanged_once_and_refresh_tokens_rotate(xsoar, requests_mock):
    token_endpoint = mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", [
        {"json": {"access_token": make_jwt({"n": 1}), "refresh_token": "rt-one-0123456789", "expires_in": 3599}},
        {"json": {"access_token": make_jwt({"n": 2}), "refresh_token": "rt-two-0123456789", "expires_in": 3599}},
    ])
    token_endpoint = requests_mock.request_history  # noqa: F841 - history read below
    requests_mock.get(f"{API}/alerts", json={"value": []})
    params = auth_code_params("0.AAAA-code_value")

    assert xsoar.run("microsoft-atp-test", params=params).errors == []
    posts = [r for r in requests_mock.request_history if r.method == "POST"]
    first = form(posts[0])
    assert first["grant_type"] == "authorization_code"
    assert first["code"] == "0.AAAA-code_value"
    assert first["redirect_uri"] == REDIRECT
    assert xsoar.context["current_refresh_token"] == "rt-one-0123456789"

    xsoar.clock.advance(7200)
    assert xsoar.run("microsoft-atp-test", params=params).errors == []
    posts = [r for r in requests_mock.request_history if r.method == "POST"]
    second = form(posts[1])
    assert second["grant_type"] == "refresh_token"
    assert second["refresh_token"] == "rt-one-0123456789"
    assert "code" not in second
    assert xsoar.context["current_refresh_token"] == "rt-two-0123456789"


def test_refresh_token_rotated_by_a_concurrent_run_is_picked_up(xsoar, requests_mock):
    mock_entra(requests_mock)

    def token(request, context):
        sent = form(request)
        if sent["refresh_token"] == "rt-old-0123456789":
            xsoar.context["current_refresh_token"] = "rt-new-0123456789"  # the other run saved its rotation
            context.status_code = 400
            return {"error": "invalid_grant", "error_codes": [70000], "error_description": "AADSTS70000: used"}
        return {"access_token": make_jwt(), "refresh_token": "rt-newer-0123456789", "expires_in": 3599}

    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", json=token)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    xsoar.context = {"current_refresh_token": "rt-old-0123456789"}

    assert xsoar.run("microsoft-atp-test", params=auth_code_params("code")).errors == []
    sent = [form(r)["refresh_token"] for r in requests_mock.request_history if r.method == "POST"]
    assert sent == ["rt-old-0123456789", "rt-new-0123456789"]
    assert xsoar.context["current_refresh_token"] == "rt-newer-0123456789"


def test_pasted_code_with_extra_query_text_is_rejected(xsoar, requests_mock):
    mock_entra(requests_mock)
    run = xsoar.run("microsoft-atp-test", params=auth_code_params("abc&session_state=123"))
    assert "Paste only the value" in run.error
    assert not [r for r in requests_mock.request_history if r.method == "POST"]


def test_test_module_explains_the_auth_code_steps(xsoar):
    run = xsoar.run("test-module", params=auth_code_params("code"))
    assert "!microsoft-atp-generate-login-url" in run.error and "!microsoft-atp-test" in run.error


def test_auth_code_without_code_explains_steps(xsoar, requests_mock):
    mock_entra(requests_mock)
    assert "one-time sign-in" in xsoar.run("microsoft-atp-test", params=auth_code_params()).error


def test_expired_refresh_token_suggests_reset(xsoar, requests_mock):
    mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", status_code=400, json={
        "error": "invalid_grant", "error_codes": [70008],
        "error_description": "AADSTS70008: The provided authorization code or refresh token has expired."})
    xsoar.context = {"current_refresh_token": "old-refresh-token-123"}
    run = xsoar.run("microsoft-atp-test", params=auth_code_params("code"))
    assert "AADSTS70008" in run.error and "microsoft-atp-auth-reset" in run.error
    assert_no_secret(run, "old-refresh-token-123")


# ---- managed identity ---------------------------------------------------------------------------

IMDS = "http://169.254.169.254/metadata/identity/oauth2/token"


@pytest.mark.parametrize("client_id", ["", "99999999-8888-7777-6666-555555555555"])
def test_managed_identity_system_and_user_assigned(xsoar, requests_mock, client_id):
    imds = requests_mock.get(IMDS, json={"access_token": make_jwt(), "expires_in": "3599", "token_type": "Bearer"})
    requests_mock.get(f"{API}/alerts", json={"value": []})
    params = {"auth_flow": "Azure Managed Identities", "managed_identities_client_id": {"password": client_id}}

    assert xsoar.run("microsoft-atp-test", params=params).errors == []
    request = imds.last_request
    query = parse_qs(urlparse(request.url).query)
    assert request.headers["Metadata"].lower() == "true"
    assert query["resource"] == ["https://api.securitycenter.microsoft.com"]
    assert query.get("client_id") == ([client_id] if client_id else None)


def test_managed_identity_answer_that_is_not_a_token_is_explained(xsoar, requests_mock):
    requests_mock.get(IMDS, status_code=403, text="resolve_deny: denied destination")
    run = xsoar.run("microsoft-atp-test", params={"auth_flow": "Azure Managed Identities"})
    assert "did not answer with a token" in run.error and "Azure resource" in run.error


def test_managed_identity_off_azure_fails_fast_and_clearly(xsoar, requests_mock):
    requests_mock.get(IMDS, exc=requests.exceptions.ConnectTimeout)
    run = xsoar.run("microsoft-atp-test", params={"auth_flow": "Azure Managed Identities"})
    assert "Azure managed-identity endpoint" in run.error


# ---- Cortex XSOAR app (oproxy) ---------------------------------------------------------------------

ENC_KEY = base64.b64encode(bytes(range(32))).decode()
OPROXY_TOKEN = "consent-page-token-0123456789"


def oproxy_params(auth_id: str = "reg-123") -> dict:
    return {"auth_flow": "Cortex XSOAR app", "_auth_id_encrypted": {"password": auth_id},
            "_tenant_id_encrypted": {"password": OPROXY_TOKEN}, "credentials": {"password": ENC_KEY}}


def decrypt_oproxy_token(encrypted: str) -> str:
    raw = base64.b64decode(encrypted)
    return AESGCM(base64.b64decode(ENC_KEY)).decrypt(raw[:12], raw[12:], None).decode()


def test_oproxy_request_format(xsoar, requests_mock):
    oproxy = requests_mock.post(mde.OPROXY_URL, json={"access_token": make_jwt(), "expires_in": 3595})
    requests_mock.get(f"{API}/alerts", json={"value": []})

    assert xsoar.run("test-module", params=oproxy_params()).results == ["ok"]
    body = oproxy.last_request.json()
    assert set(body) == {"app_name", "registration_id", "encrypted_token", "scope", "resource"}
    assert body["app_name"] == "ms-defender-atp" and body["registration_id"] == "reg-123"
    timestamp, token = decrypt_oproxy_token(body["encrypted_token"]).split(":", 1)
    assert token == OPROXY_TOKEN
    assert int(timestamp) == int(xsoar.clock.time)


def test_oproxy_registration_id_with_url_override(xsoar, requests_mock):
    oproxy = requests_mock.post("https://proxy.example.test/obtain-token", json={"access_token": make_jwt()})
    requests_mock.get(f"{API}/alerts", json={"value": []})
    assert xsoar.run("test-module", params=oproxy_params("reg-9@https://proxy.example.test/obtain-token")).results == ["ok"]
    assert oproxy.last_request.json()["registration_id"] == "reg-9"


def test_oproxy_failure_backs_off_and_hides_the_key(xsoar, requests_mock):
    requests_mock.post(mde.OPROXY_URL, status_code=400, json={"title": "Bad request", "detail": "wrong key"})
    run = xsoar.run("microsoft-atp-test", params=oproxy_params())
    assert "Bad request. wrong key" in run.error
    assert xsoar.context["next_request_time"] == xsoar.clock.time + 2
    assert_no_secret(run, ENC_KEY, OPROXY_TOKEN)
    assert "delayed until" in xsoar.run("microsoft-atp-test", params=oproxy_params()).error


def test_oproxy_bad_key_is_a_configuration_error(xsoar):
    params = oproxy_params()
    params["credentials"] = {"password": "not base64!!"}
    assert "Key is not a valid encryption key" in xsoar.run("microsoft-atp-test", params=params).error


# ---- legacy instances ------------------------------------------------------------------------------

LEGACY_CASES = [
    ({"self_deployed": True, "_auth_id": CLIENT_ID, "_tenant_id": TENANT, "credentials": {"password": "x" * 10}},
     mde.FLOW_CLIENT_CREDENTIALS),
    ({"self_deployed": False, "auth_id": "reg", "tenant_id": "tok", "enc_key": ENC_KEY}, mde.FLOW_XSOAR_APP),
    ({"auth_type": "Azure Managed Identities"}, mde.FLOW_MANAGED_IDENTITY),
    ({"self_deployed": "true", "auth_type": "Authorization Code", "redirect_uri": "https://x"}, mde.FLOW_AUTH_CODE),
    ({"self_deployed": True, "auth_type": "Client Credentials"}, mde.FLOW_CLIENT_CREDENTIALS),
]


@pytest.mark.parametrize("params, flow", LEGACY_CASES)
def test_legacy_parameters_map_onto_a_flow(params, flow):
    assert mde.auth_settings_from_params(params).flow == flow


def test_legacy_client_credentials_instance_works_end_to_end(xsoar, requests_mock):
    token_endpoint = mock_entra(requests_mock)
    requests_mock.get("https://api-gcc.securitycenter.microsoft.us/api/alerts", json={"value": []})
    params = {"self_deployed": True, "_auth_id": CLIENT_ID, "_tenant_id": TENANT, "is_gcc": True,
              "credentials": {"identifier": "", "password": CLIENT_SECRET}}
    assert xsoar.run("test-module", params=params).results == ["ok"]
    assert form(token_endpoint.last_request)["client_id"] == CLIENT_ID


def test_legacy_certificate_parameters(certificate):
    cert, pem = certificate
    thumbprint = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303
    settings = mde.auth_settings_from_params({"self_deployed": True, "certificate_thumbprint": thumbprint,
                                              "private_key": pem})
    assert settings.thumbprint == thumbprint.upper() and "BEGIN PRIVATE KEY" in settings.private_key


# ---- auth commands --------------------------------------------------------------------------------


def test_auth_reset_clears_token_state_only(xsoar, requests_mock):
    xsoar.context = {"access_token": "t", "valid_until": 1e12, "current_refresh_token": "r", "fetch_cursor": 1}
    run = xsoar.run("microsoft-atp-auth-reset")
    assert "reset" in run.entry["HumanReadable"]
    assert xsoar.context == {"fetch_cursor": 1}


def test_list_auth_permissions_shows_roles_and_blocked_commands(xsoar, requests_mock, monkeypatch):
    mock_entra(requests_mock, token=make_jwt({"roles": ["Alert.Read.All", "Machine.Read.All"]}))
    monkeypatch.setitem(mde.COMMANDS, "fake-isolate", mde.Command(lambda c, a: None, ("Fake.Permission",)))
    run = xsoar.run("microsoft-atp-list-auth-permissions")
    readable = run.entry["HumanReadable"]
    assert "|Alert.Read.All|" in readable and "|Machine.Read.All|" in readable
    assert "|Fake.Permission|fake-isolate|" in readable
    assert run.entry["Contents"]["roles"] == ["Alert.Read.All", "Machine.Read.All"]


def test_unknown_command_is_an_error_entry(xsoar):
    assert "is not implemented" in xsoar.run("microsoft-atp-no-such-thing").error


def test_unexpected_exception_becomes_an_error_entry_without_secrets(xsoar, requests_mock, monkeypatch):
    def explode(client, args):
        raise RuntimeError(f"boom {CLIENT_SECRET}")

    monkeypatch.setitem(mde.COMMANDS, "microsoft-atp-test", mde.Command(explode))
    run = xsoar.run("microsoft-atp-test")
    assert run.error.startswith("Failed to execute microsoft-atp-test: RuntimeError: boom")
    assert_no_secret(run, CLIENT_SECRET)


@pytest.mark.parametrize("settings, secrets", [
    (mde.XsoarAppSettings(mde.CLOUDS["Worldwide"], "app-id", "consent-token-1", "encryption-key-1"),
     ["consent-token-1", "encryption-key-1"]),
    (mde.ClientCredentialsSettings(mde.CLOUDS["Worldwide"], "client-id", "tenant-id", "client-secret-1",
                                   private_key="-----BEGIN PRIVATE KEY-----x"), ["client-secret-1", "PRIVATE KEY"]),
    (mde.AuthorizationCodeSettings(mde.CLOUDS["Worldwide"], "client-id", "tenant-id", "client-secret-1",
                                   redirect_uri="https://localhost/cb", auth_code="auth-code-1"),
     ["client-secret-1", "auth-code-1"]),
])
def test_settings_records_do_not_show_their_secrets(settings, secrets):
    shown = repr(settings)
    assert [secret for secret in secrets if secret in shown] == []
    assert "client-id" in shown or "app-id" in shown  # what identifies the app is still there
    assert shown.count("=<set>") == len(secrets)


@pytest.mark.parametrize("endpoint_type, login, api_base, scope", CLOUD_CASES)
def test_every_flow_uses_the_clouds_hosts(xsoar, requests_mock, endpoint_type, login, api_base, scope):
    """Managed identity asks for the cloud's API resource, oproxy tokens reach the cloud's API host, and
    the authorization-code login URL points at the cloud's login host."""
    imds = requests_mock.get(IMDS, json={"access_token": make_jwt(), "expires_in": "3599"})
    requests_mock.post(mde.OPROXY_URL, json={"access_token": make_jwt(), "expires_in": 3595})
    alerts = requests_mock.get(f"{api_base}/api/alerts", json={"value": []})

    assert xsoar.run("microsoft-atp-test", params={"auth_flow": "Azure Managed Identities",
                                                   "endpoint_type": endpoint_type}).errors == []
    assert parse_qs(urlparse(imds.last_request.url).query)["resource"] == [mde.CLOUDS[endpoint_type].mi_resource]
    assert urlparse(mde.CLOUDS[endpoint_type].mi_resource).netloc.split(".", 1)[1] == urlparse(api_base).netloc.split(
        ".", 1)[1]
    assert xsoar.run("microsoft-atp-test", params={**oproxy_params(), "endpoint_type": endpoint_type}).errors == []
    assert alerts.call_count == 2

    login_url = xsoar.run("microsoft-atp-generate-login-url", params={
        **auth_code_params(), "endpoint_type": endpoint_type}).entry["Contents"]["login_url"]
    assert login_url.startswith(f"{login}/{TENANT}/oauth2/v2.0/authorize?")
    assert parse_qs(urlparse(login_url).query)["scope"] == [f"offline_access {scope}"]


def test_test_module_checks_fetch_settings_when_fetching(xsoar, requests_mock):
    mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    run = xsoar.run("test-module", params=client_credentials_params(isFetch=True, max_fetch="0"))
    assert "max_fetch" in run.error and "at least 1" in run.error
    assert xsoar.run("test-module", params=client_credentials_params(isFetch=True, max_fetch="20")).results == ["ok"]


def test_a_docker_image_without_msal_gets_a_clear_error(xsoar, requests_mock, monkeypatch):
    monkeypatch.setattr(mde, "msal", None)  # not imported yet ...
    monkeypatch.setitem(sys.modules, "msal", None)  # ... and `import msal` fails, as in an image without it
    assert "needs the Python package msal" in xsoar.run("microsoft-atp-test").error
    assert "needs the Python package msal" in xsoar.run(
        "microsoft-atp-test", params={"auth_flow": "Azure Managed Identities"}).error
    requests_mock.post(mde.OPROXY_URL, json={"access_token": make_jwt(), "expires_in": 3595})
    requests_mock.get(f"{API}/alerts", json={"value": []})
    assert xsoar.run("microsoft-atp-test", params=oproxy_params()).errors == []

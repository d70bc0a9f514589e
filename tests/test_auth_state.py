"""Token state follows the credential, one token request for many runs, and msal/Entra failures explained."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import (
    API,
    CLIENT_SECRET,
    LOGIN,
    TENANT,
    FakeClock,
    client_credentials_params,
    make_jwt,
    mock_entra,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_auth import IMDS, auth_code_params, oproxy_params

import demistomock
import MicrosoftDefenderForEndpoint as mde

ROOT = Path(__file__).resolve().parent.parent
OTHER_TENANT = "99999999-2222-3333-4444-555555555555"
START = 1_800_000_000.0


class ObservedClock(FakeClock):
    """A fake clock that lets a test act (as another run would) while the plugin sleeps."""

    def __init__(self) -> None:
        super().__init__(START)
        self.on_sleep = None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.on_sleep:
            self.on_sleep()


@pytest.fixture
def clock(xsoar) -> ObservedClock:
    xsoar.clock = ObservedClock()
    return xsoar.clock


def is_token_request(request) -> bool:
    return ((request.method == "POST" and request.url.split("?")[0].endswith(("/oauth2/v2.0/token", "/obtain-token")))
            or request.url.startswith(IMDS))


def token_request_count(requests_mock) -> int:
    return sum(is_token_request(r) for r in requests_mock.request_history)


def new_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def first_key() -> str:
    return new_private_key()


@pytest.fixture(scope="module")
def second_key() -> str:
    return new_private_key()


@pytest.fixture
def every_token_endpoint(requests_mock):
    for tenant in (TENANT, OTHER_TENANT):
        mock_entra(requests_mock, tenant=tenant, refresh_token="rt-0123456789")
    requests_mock.post(mde.OPROXY_URL, json={"access_token": make_jwt(), "expires_in": 3595})
    requests_mock.get(IMDS, json={"access_token": make_jwt(), "expires_in": "3599"})
    for api in (API, "https://api-eu.securitycenter.microsoft.com/api"):
        requests_mock.get(f"{api}/alerts", json={"value": []})
    return requests_mock


def thumbprint_of(pem: str) -> str:
    key = serialization.load_pem_private_key(pem.encode(), None)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    import datetime as dt

    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now).sign(key, hashes.SHA256()))
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303


OTHER_ENC_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def credential_changes(pem: str, other_pem: str) -> dict[str, tuple[dict, dict]]:
    certificate_params = {"credentials": {"password": ""},
                          "creds_certificate": {"identifier": thumbprint_of(pem), "password": pem}}
    mi = {"auth_flow": "Azure Managed Identities"}
    return {
        "client secret": (client_credentials_params(), client_credentials_params(credentials={"password": "x" * 12})),
        "tenant": (client_credentials_params(),
                   client_credentials_params(_tenant_id_encrypted={"password": OTHER_TENANT})),
        "client id": (client_credentials_params(),
                      client_credentials_params(_auth_id_encrypted={"password": "ffffffff-0000-0000-0000-00000000"})),
        "certificate thumbprint": (client_credentials_params(**certificate_params), client_credentials_params(
            **{**certificate_params, "creds_certificate": {"identifier": thumbprint_of(other_pem), "password": pem}})),
        "private key": (client_credentials_params(**certificate_params), client_credentials_params(
            **{**certificate_params, "creds_certificate": {"identifier": thumbprint_of(pem), "password": other_pem}})),
        "encryption key": (oproxy_params(), {**oproxy_params(), "credentials": {"password": OTHER_ENC_KEY}}),
        "consent token": (oproxy_params(), {**oproxy_params(), "_tenant_id_encrypted": {"password": "other-token-123"}}),
        "managed-identity client id": (mi, {**mi, "managed_identities_client_id": {"password": "1234-abcd"}}),
        "flow": (client_credentials_params(), auth_code_params("new-code")),
        "cloud": (client_credentials_params(), client_credentials_params(endpoint_type="EU Geo Proximity")),
    }


@pytest.mark.parametrize("change", ["client secret", "tenant", "client id", "certificate thumbprint", "private key",
                                    "encryption key", "consent token", "managed-identity client id", "flow",
                                    "cloud"])
def test_any_credential_change_makes_the_next_run_request_a_new_token(xsoar, every_token_endpoint, clock, change,
                                                                      first_key, second_key):
    before, after = credential_changes(first_key, second_key)[change]
    assert xsoar.run("microsoft-atp-test", params=before).errors == []
    assert xsoar.run("microsoft-atp-test", params=before).errors == []
    assert token_request_count(every_token_endpoint) == 1

    assert xsoar.run("microsoft-atp-test", params=after).errors == []
    assert token_request_count(every_token_endpoint) == 2
    stored = json.dumps(xsoar.context)
    for secret in (CLIENT_SECRET, "x" * 12, second_key.splitlines()[1], OTHER_ENC_KEY, "other-token-123"):
        assert secret not in stored


def test_a_wrong_key_after_a_good_one_fails_instead_of_reusing_the_token(xsoar, requests_mock, clock):
    def token(request, context):
        if "client_secret=wrong-secret-value" in request.text:
            context.status_code = 401
            return {"error": "invalid_client", "error_codes": [7000215],
                    "error_description": "AADSTS7000215: Invalid client secret provided."}
        return {"access_token": make_jwt(), "expires_in": 3599}

    mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", json=token)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    assert xsoar.run("test-module").results == ["ok"]
    run = xsoar.run("test-module", params=client_credentials_params(credentials={"password": "wrong-secret-value"}))
    assert "AADSTS7000215" in run.error and "client secret in Key is wrong" in run.error


# ---- single flight ---------------------------------------------------------------------------------


def stored_token_state(xsoar, token: str, valid_for: float = 3000) -> None:
    """What another run of the same instance would have saved."""
    provider = mde.build_client(client_credentials_params(), clock=xsoar.clock).provider
    xsoar.context = provider.store.with_state(xsoar.context, access_token=token,
                                              valid_until=xsoar.clock.now() + valid_for, token_lease=None)
    xsoar.context_version += 1


def test_a_run_waits_for_the_token_another_run_is_requesting(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    alerts = requests_mock.get(f"{API}/alerts", json={"value": []})
    theirs = make_jwt({"n": "theirs"})
    fingerprint = mde.build_client(client_credentials_params()).provider.store.fingerprint
    xsoar.context = {"auth_fingerprint": fingerprint,
                     "token_lease": {"owner": "other-run", "until": START + mde.TOKEN_LEASE_SECONDS}}
    clock.on_sleep = lambda: clock.sleeps == [mde.TOKEN_LEASE_POLL] * 3 and stored_token_state(xsoar, theirs)

    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_request_count(requests_mock) == 0
    assert alerts.last_request.headers["Authorization"] == f"Bearer {theirs}"
    assert len(clock.sleeps) == 3


def test_a_run_that_loses_the_race_uses_the_winners_token(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    alerts = requests_mock.get(f"{API}/alerts", json={"value": []})
    winner = make_jwt({"n": "winner"})
    xsoar.before_context_write = lambda: stored_token_state(xsoar, winner)  # written between our read and write

    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_request_count(requests_mock) == 0
    assert alerts.last_request.headers["Authorization"] == f"Bearer {winner}"


def test_a_lease_left_by_a_crashed_run_expires(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    fingerprint = mde.build_client(client_credentials_params()).provider.store.fingerprint
    xsoar.context = {"auth_fingerprint": fingerprint,
                     "token_lease": {"owner": "crashed-run", "until": START + 30}}

    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_request_count(requests_mock) == 1
    assert sum(clock.sleeps) == pytest.approx(30, abs=mde.TOKEN_LEASE_POLL)
    assert "token_lease" not in xsoar.context and xsoar.context["access_token"]


def test_a_failed_token_request_releases_the_lease(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", status_code=400, json={
        "error": "invalid_client", "error_codes": [7000215], "error_description": "AADSTS7000215: bad secret"})
    assert xsoar.run("microsoft-atp-test").errors
    assert "token_lease" not in xsoar.context


def test_after_a_401_a_token_another_run_already_renewed_is_used(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    old, renewed = make_jwt({"n": "old"}), make_jwt({"n": "renewed"})
    stored_token_state(xsoar, old)

    def alerts(request, context):
        if request.headers["Authorization"] == f"Bearer {old}":
            stored_token_state(xsoar, renewed)  # another run saw the 401 first and renewed the token
            context.status_code = 401
            return {"error": {"code": "Unauthorized", "message": "expired"}}
        return {"value": []}

    requests_mock.get(f"{API}/alerts", json=alerts)
    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_request_count(requests_mock) == 0


def test_a_401_for_the_stored_token_renews_it_once(xsoar, requests_mock, clock):
    token_endpoint = mock_entra(requests_mock)
    stored_token_state(xsoar, make_jwt({"n": "stale"}))
    requests_mock.get(f"{API}/alerts", [{"status_code": 401, "json": {"error": {"code": "Unauthorized"}}},
                                        {"json": {"value": []}}])
    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_endpoint.call_count == 1


# ---- msal and Entra failures --------------------------------------------------------------------------


def test_a_corrupt_private_key_names_the_parameter_without_a_traceback(xsoar, requests_mock, clock, capfd):
    mock_entra(requests_mock)
    garbage = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----"
    params = client_credentials_params(credentials={"password": ""},
                                       creds_certificate={"identifier": "AB" * 20, "password": garbage})
    run = xsoar.run("microsoft-atp-test", params=params)
    assert run.error.startswith("Private Key cannot be read")
    assert "Certificate Thumbprint / Private Key" in run.error
    assert token_request_count(requests_mock) == 0
    assert capfd.readouterr().err == ""


def test_msal_logging_goes_to_the_debug_log_not_stderr(xsoar, requests_mock, clock, capfd):
    mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    assert xsoar.run("microsoft-atp-test").errors == []
    logged: list[str] = []
    mde.REDACT.add("secret-in-a-log-line")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demistomock, "debug", lambda message, *a: logged.append(message))
        try:
            raise ValueError("secret-in-a-log-line")
        except ValueError:
            logging.getLogger("msal.application").exception("token request failed")
    assert capfd.readouterr().err == ""
    assert logged == ["msal.application: token request failed (ValueError: <redacted>)"]


@pytest.mark.parametrize("failures", [
    [{"status_code": 503, "text": "Service Unavailable"}],
    [{"status_code": 500, "text": "oops"}, {"exc": requests.exceptions.ConnectionError}],
    [{"status_code": 503, "headers": {"Retry-After": "7"}, "text": "busy"}],
])
def test_entra_5xx_and_connection_errors_are_retried_with_backoff(xsoar, requests_mock, clock, failures):
    mock_entra(requests_mock)
    token_endpoint = requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", [
        *failures, {"json": {"access_token": make_jwt(), "expires_in": 3599}}])
    requests_mock.get(f"{API}/alerts", json={"value": []})

    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_endpoint.call_count == len(failures) + 1
    expected = [7.0] if "headers" in failures[0] else list(mde.TOKEN_REQUEST_RETRY_DELAYS[:len(failures)])
    assert clock.sleeps == expected


def test_entra_down_is_an_error_after_bounded_retries(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    token_endpoint = requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", status_code=503, text="down")
    run = xsoar.run("microsoft-atp-test")
    assert "HTTP 503" in run.error and "try again later" in run.error
    assert token_endpoint.call_count == len(mde.TOKEN_REQUEST_RETRY_DELAYS) + 1
    assert clock.sleeps == list(mde.TOKEN_REQUEST_RETRY_DELAYS)


def test_a_wrong_tenant_with_a_client_secret_gets_tenant_advice_not_certificate_advice(xsoar, requests_mock, clock):
    requests_mock.get(f"{LOGIN}/{TENANT}/v2.0/.well-known/openid-configuration", status_code=400, json={
        "error": "invalid_tenant", "error_codes": [90002],
        "error_description": f"AADSTS90002: Tenant '{TENANT}' not found."})
    run = xsoar.run("microsoft-atp-test")
    assert "Token (the Directory/tenant ID)" in run.error
    assert "Certificate" not in run.error and "Private Key" not in run.error


@pytest.mark.parametrize("use_certificate, expected, unexpected", [
    (False, "Key (client secret)", "Certificate"),
    (True, "Certificate Thumbprint", "Key (client secret)"),
])
def test_advice_matches_the_credential_type(xsoar, requests_mock, clock, first_key, use_certificate, expected,
                                            unexpected):
    mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", status_code=401, json={
        "error": "invalid_client", "error_description": "The client could not be authenticated."})
    params = client_credentials_params()
    if use_certificate:
        params = client_credentials_params(credentials={"password": ""}, creds_certificate={
            "identifier": thumbprint_of(first_key), "password": first_key})
    run = xsoar.run("microsoft-atp-test", params=params)
    assert expected in run.error and unexpected not in run.error


def test_certificate_rejection_gets_certificate_advice(xsoar, requests_mock, clock, first_key):
    mock_entra(requests_mock)
    requests_mock.post(f"{LOGIN}/{TENANT}/oauth2/v2.0/token", status_code=401, json={
        "error": "invalid_client", "error_codes": [700027], "error_description": "AADSTS700027: assertion failed"})
    params = client_credentials_params(credentials={"password": ""}, creds_certificate={
        "identifier": thumbprint_of(first_key), "password": first_key})
    assert "uploaded to the app registration" in xsoar.run("microsoft-atp-test", params=params).error


# ---- imports ----------------------------------------------------------------------------------------


def test_msal_and_aesgcm_are_not_imported_when_the_plugin_loads():
    code = ("import sys, MicrosoftDefenderForEndpoint; "
            "print(sorted(m for m in sys.modules if m == 'msal' or m.endswith('ciphers.aead')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_loading_the_plugin_imports_nothing_beyond_requests_and_its_own_imports():
    """Import cost is a bench goal (<= 1.15x `import requests`); this keeps heavy modules such as dataclasses
    (and the inspect/ast it pulls in) from creeping back into the plugin's load."""
    code = ("import sys, requests; before = set(sys.modules); import MicrosoftDefenderForEndpoint; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    added = set(result.stdout.split())
    assert added - {"MicrosoftDefenderForEndpoint", "demistomock", "secrets"} == set()


def test_the_xsoar_app_flow_runs_without_msal(xsoar, requests_mock, clock, monkeypatch):
    monkeypatch.setattr(mde, "msal", None)
    monkeypatch.setitem(sys.modules, "msal", None)
    requests_mock.post(mde.OPROXY_URL, json={"access_token": make_jwt(), "expires_in": 3595})
    requests_mock.get(f"{API}/alerts", json={"value": []})
    assert xsoar.run("test-module", params=oproxy_params()).results == ["ok"]
    assert mde.msal is None


def test_legacy_state_without_a_fingerprint_is_adopted(xsoar, requests_mock, clock):
    """An instance upgraded from the older integration keeps its token."""
    alerts = requests_mock.get(f"{API}/alerts", json={"value": []})
    xsoar.context = {"access_token": "legacy-token-123456", "valid_until": START + 600}
    assert xsoar.run("microsoft-atp-test").errors == []
    assert alerts.last_request.headers["Authorization"] == "Bearer legacy-token-123456"


# ---- instance parameters the plugin reads ------------------------------------------------------------


@pytest.mark.parametrize("name", ["insecure", "proxy", "is_gcc"])
def test_a_checkbox_parameter_that_is_not_a_boolean_is_named(xsoar, name):
    run = xsoar.run("microsoft-atp-test", params=client_credentials_params(**{name: "maybe"}))
    assert f"({name}) must be true or false (got 'maybe')" in run.error


@pytest.mark.parametrize("name, label", [("url", "Server URL (url)"), ("login_url", "Login URL (login_url)")])
def test_a_custom_cloud_url_that_is_not_a_url_is_named(xsoar, name, label):
    params = client_credentials_params(endpoint_type="Custom", **{"url": "https://api.example.test", name: "not a url"})
    assert f"{label} 'not a url' is not a URL" in xsoar.run("microsoft-atp-test", params=params).error


def test_a_lease_from_a_clock_far_ahead_is_not_waited_for(xsoar, requests_mock, clock):
    mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    fingerprint = mde.build_client(client_credentials_params()).provider.store.fingerprint
    xsoar.context = {"auth_fingerprint": fingerprint, "token_lease": {"owner": "skewed-run", "until": START + 86400}}
    assert xsoar.run("microsoft-atp-test").errors == []
    assert token_request_count(requests_mock) == 1 and clock.sleeps == []


def test_a_platform_without_the_versioned_context_pair_still_works(xsoar, requests_mock, clock, monkeypatch):
    """Older XSOAR servers have only the plain get/set pair: same token reuse, no race protection."""
    mock_entra(requests_mock)
    requests_mock.get(f"{API}/alerts", json={"value": []})
    monkeypatch.setattr(mde.TokenStore, "_versioned", staticmethod(lambda: False))
    monkeypatch.setattr(xsoar, "_set_context_versioned", None)  # never called
    for _ in range(3):
        assert xsoar.run("microsoft-atp-test").errors == []
    assert token_request_count(requests_mock) == 1
    assert xsoar.context_version == 2 and xsoar.context["access_token"]  # the lease, then the token


def test_an_unexpected_msal_exception_is_an_error_entry_without_secrets(xsoar, requests_mock, clock, monkeypatch,
                                                                        capfd):
    import msal

    def fail(self, scopes, **kwargs):
        raise RuntimeError(f"internal state broken near {CLIENT_SECRET}")

    mock_entra(requests_mock)
    monkeypatch.setattr(msal.ConfidentialClientApplication, "acquire_token_for_client", fail)
    run = xsoar.run("microsoft-atp-test")
    assert run.error == "The token request failed: RuntimeError: internal state broken near <redacted>"
    assert capfd.readouterr().err == ""
    assert "token_lease" not in xsoar.context


@pytest.mark.parametrize(("single_use", "failure", "calls"), [
    (True, requests.exceptions.ReadTimeout, 1),  # the code or refresh token may be spent: never replayed
    (True, requests.exceptions.ConnectTimeout, 4),  # never reached Entra: safe to send again
    (False, requests.exceptions.ReadTimeout, 4),  # client credentials can be asked for again
])
def test_token_posts_are_replayed_only_when_that_cannot_spend_a_grant(requests_mock, single_use, failure, calls):
    url = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token"
    route = requests_mock.post(url, exc=failure)
    clock = FakeClock()
    http = mde.MsalHttpClient(requests.Session(), mde.Network(), (1, 1), clock, single_use_grants=single_use)

    with pytest.raises(failure):
        http.post(url, data={"grant_type": "refresh_token"})
    assert route.call_count == calls
    assert clock.sleeps == [1.0, 2.0, 4.0][:calls - 1]


@pytest.mark.parametrize(("failure", "hint"), [
    (requests.exceptions.SSLError("certificate verify failed"), "REQUESTS_CA_BUNDLE"),
    (requests.exceptions.ConnectionError("Failed to establish a new connection"), "Login URL parameter (login_url)"),
])
def test_an_unreachable_login_host_names_the_setting_to_check(xsoar, requests_mock, failure, hint):
    requests_mock.get(re.compile(f"{LOGIN}/.*"), exc=failure)
    requests_mock.post(re.compile(f"{LOGIN}/.*"), exc=failure)

    error = xsoar.run("microsoft-atp-test").error

    assert "Could not reach the Microsoft login service" in error and hint in error
    assert "Traceback" not in error

"""Tests of the HTTPS emulator (mde_emulator): identity flows with plain requests and with msal, the Defender API
with OData, faults, action lifecycle, admin endpoints and the command-line start-up contract."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lab.emulator import wait_until_ready
from mde_emulator import server as emulator_server
from mde_emulator.admin import AlertStream
from mde_emulator.api_actions import PACKAGE_LINK_LIFETIME
from mde_emulator.clock import Clock
from mde_emulator.data import Store
from mde_emulator.server import EmulatorServer, Options

MDE_SCOPE = "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"
MACHINES = 10050  # more than one 10,000-record page
ENV_OVERRIDES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT",
                 "MSI_SECRET", "IMDS_ENDPOINT")
DEFAULT_FAULTS = {"rate_limit_per_minute": None, "rate_limit_families": None, "rate_limit_window_seconds": 60,
                  "error_burst": None, "latency_ms": 0,
                  "token_lifetime": 3600, "drop_connections": 0, "action_outcome": "Succeeded", "action_delay": 1}


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(Options(seed=3, machines=MACHINES, alerts=300, action_delay=1)) as srv:
        srv.emulator.clock.freeze(True)  # emulator time moves only when a test advances it, however slow the machine
        yield srv


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def info(server):
    yield server.info
    requests.post(f"{server.base_url}/admin/faults", json=DEFAULT_FAULTS, verify=str(server.ca_path), timeout=10)


@pytest.fixture
def store(server):
    return server.emulator.store


def _token(info, name="full", scope=MDE_SCOPE) -> str:
    client = info["clients"][name]
    r = requests.post(f"{info['login_url']}/{info['tenant_id']}/oauth2/v2.0/token", verify=info["ca_bundle"],
                      data={"client_id": client["client_id"], "client_secret": client["client_secret"],
                            "grant_type": "client_credentials", "scope": scope}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


class Api:
    def __init__(self, info, client="full"):
        self.info = info
        self.headers = {"Authorization": f"Bearer {_token(info, client)}"}

    def request(self, method, path, **kwargs):
        return requests.request(method, f"{self.info['api_url']}{path}", headers=self.headers,
                                verify=self.info["ca_bundle"], timeout=30, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)


@pytest.fixture
def api(info):
    return Api(info)


def _session(info) -> requests.Session:
    session = requests.Session()
    session.verify = info["ca_bundle"]
    return session


def _admin(info, method, path, **kwargs):
    return requests.request(method, f"{info['admin_url']}{path}", verify=info["ca_bundle"], timeout=10, **kwargs)


def _advance(info, seconds) -> None:
    """Move the emulator's clock forward (the module's server is shared: keep advances small unless needed)."""
    r = _admin(info, "POST", "/clock", json={"advance": seconds})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------------------------
# Entra ID
# ---------------------------------------------------------------------------------------------------------------
def test_discovery_documents(info):
    base, tenant = info["login_url"], info["tenant_id"]
    doc = requests.get(f"{base}/{tenant}/v2.0/.well-known/openid-configuration", verify=info["ca_bundle"]).json()
    assert doc["token_endpoint"] == f"{base}/{tenant}/oauth2/v2.0/token"
    assert doc["authorization_endpoint"] == f"{base}/{tenant}/oauth2/v2.0/authorize"
    assert doc["issuer"] == f"{base}/{tenant}/v2.0"
    keys = requests.get(doc["jwks_uri"], verify=info["ca_bundle"]).json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"]
    org = requests.get(f"{base}/organizations/v2.0/.well-known/openid-configuration", verify=info["ca_bundle"])
    assert org.json()["token_endpoint"] == f"{base}/organizations/oauth2/v2.0/token"
    inst = requests.get(f"{base}/common/discovery/instance", verify=info["ca_bundle"],
                        params={"api-version": "1.1",
                                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize"})
    assert inst.json()["tenant_discovery_endpoint"] == f"{base}/{tenant}/v2.0/.well-known/openid-configuration"
    bad = requests.get(f"{base}/{'0' * 8}-0000-0000-0000-{'0' * 12}/v2.0/.well-known/openid-configuration",
                       verify=info["ca_bundle"])
    assert bad.status_code == 400 and bad.json()["error_codes"] == [90002]


def test_client_credentials_token_claims(info):
    token = _token(info)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "https://securitycenter.onmicrosoft.com/windowsatpservice"
    assert claims["iss"] == f"https://sts.windows.net/{info['tenant_id']}/"
    assert claims["appid"] == info["clients"]["full"]["client_id"] and claims["tid"] == info["tenant_id"]
    assert set(claims["roles"]) == set(info["clients"]["full"]["roles"])
    assert claims["exp"] - claims["iat"] == 3600
    limited = jwt.decode(_token(info, "limited"), options={"verify_signature": False})
    assert limited["roles"] == ["Machine.Read.All", "Alert.Read.All"]


@pytest.mark.parametrize("change, status, error, code", [
    ({"client_secret": "wrong"}, 401, "invalid_client", 7000215),
    ({"client_id": "11111111-2222-3333-4444-555555555555"}, 400, "unauthorized_client", 700016),
    ({"scope": "https://securitycenter.onmicrosoft.com/windowsatpservice"}, 400, "invalid_scope", 1002012),
    ({"scope": "https://unknown.example/.default"}, 400, "invalid_resource", 500011),
    ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ({"tenant": "contoso-missing"}, 400, "invalid_request", 90002),
])
def test_token_errors_in_entra_shape(info, change, status, error, code):
    client = info["clients"]["full"]
    form = {"client_id": client["client_id"], "client_secret": client["client_secret"],
            "grant_type": "client_credentials", "scope": MDE_SCOPE}
    form.update(change)
    tenant = form.pop("tenant", info["tenant_id"])
    r = requests.post(f"{info['login_url']}/{tenant}/oauth2/v2.0/token", data=form, verify=info["ca_bundle"])
    body = r.json()
    assert (r.status_code, body["error"], body["error_codes"]) == (status, error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert "Trace ID: " in body["error_description"] and "Correlation ID: " in body["error_description"]
    assert body["trace_id"] and body["correlation_id"] and body["timestamp"]


def test_msal_client_secret(info):
    client = info["clients"]["full"]
    app = msal.ConfidentialClientApplication(client["client_id"], client_credential=client["client_secret"],
                                             authority=f"{info['login_url']}/{info['tenant_id']}",
                                             instance_discovery=False, http_client=_session(info))
    result = app.acquire_token_for_client([MDE_SCOPE])
    assert "access_token" in result, result
    r = requests.get(f"{info['api_url']}/api/machines?$top=1", verify=info["ca_bundle"],
                     headers={"Authorization": f"Bearer {result['access_token']}"})
    assert r.status_code == 200
    bad = msal.ConfidentialClientApplication(client["client_id"], client_credential="nope",
                                             authority=f"{info['login_url']}/{info['tenant_id']}",
                                             instance_discovery=False, http_client=_session(info))
    failed = bad.acquire_token_for_client([MDE_SCOPE])
    assert failed["error"] == "invalid_client" and 7000215 in failed["error_codes"]


def test_msal_certificate_assertion(info):
    cert = info["clients"]["certificate"]
    key = Path(cert["private_key_path"]).read_text()
    assert stat.S_IMODE(os.stat(cert["private_key_path"]).st_mode) == 0o600
    app = msal.ConfidentialClientApplication(cert["client_id"],
                                             client_credential={"private_key": key, "thumbprint": cert["thumbprint"]},
                                             authority=f"{info['login_url']}/{info['tenant_id']}",
                                             instance_discovery=False, http_client=_session(info))
    result = app.acquire_token_for_client([MDE_SCOPE])
    assert "access_token" in result, result
    assert jwt.decode(result["access_token"], options={"verify_signature": False})["appidacr"] == "2"
    # a different thumbprint is refused with AADSTS700027
    wrong = msal.ConfidentialClientApplication(cert["client_id"],
                                               client_credential={"private_key": key, "thumbprint": "AB" * 20},
                                               authority=f"{info['login_url']}/{info['tenant_id']}",
                                               instance_discovery=False, http_client=_session(info))
    failed = wrong.acquire_token_for_client([MDE_SCOPE])
    assert failed["error"] == "invalid_client" and failed["error_codes"] == [700027]


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended")
def test_msal_auth_code_flow_with_pkce_and_rotating_refresh_token(info):
    client = info["clients"]["authcode"]
    session = _session(info)
    app = msal.ConfidentialClientApplication(client["client_id"], client_credential=client["client_secret"],
                                             authority=f"{info['login_url']}/{info['tenant_id']}",
                                             instance_discovery=False, http_client=session)
    flow = app.initiate_auth_code_flow([MDE_SCOPE], redirect_uri=client["redirect_uri"], response_mode="query")
    r = session.get(flow["auth_uri"], allow_redirects=False)
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith(client["redirect_uri"] + "?")
    auth_response = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert auth_response["state"] == flow["state"] and auth_response["session_state"]
    result = app.acquire_token_by_auth_code_flow(flow, auth_response)
    assert "access_token" in result, result
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert "roles" not in claims and set(claims["scp"].split()) == set(client["roles"])
    assert claims["upn"] == client["username"]
    assert app.get_accounts(), "id_token + client_info let msal build an account"
    first_rt = result["refresh_token"]
    refreshed = app.acquire_token_by_refresh_token(first_rt, [MDE_SCOPE])
    assert refreshed["refresh_token"] != first_rt
    reused = app.acquire_token_by_refresh_token(first_rt, [MDE_SCOPE])
    assert reused["error"] == "invalid_grant" and reused["error_codes"] == [70000]


def test_auth_code_xsoar_style_and_single_use(info):
    """XSOAR's login URL (no state, no PKCE) and its code exchange at /organizations without a scope."""
    client = info["clients"]["authcode"]
    url = (f"{info['login_url']}/{info['tenant_id']}/oauth2/v2.0/authorize?response_type=code&scope=offline_access"
           f"%20{MDE_SCOPE}&client_id={client['client_id']}&redirect_uri={client['redirect_uri']}")
    r = requests.get(url, allow_redirects=False, verify=info["ca_bundle"])
    query = parse_qs(urlsplit(r.headers["Location"]).query)
    assert "state" not in query
    form = {"client_id": client["client_id"], "client_secret": client["client_secret"],
            "redirect_uri": client["redirect_uri"], "grant_type": "authorization_code", "code": query["code"][0]}
    token_url = f"{info['login_url']}/organizations/oauth2/v2.0/token"
    ok = requests.post(token_url, data=form, verify=info["ca_bundle"]).json()
    assert ok["refresh_token"] and "id_token" not in ok  # no openid scope asked
    again = requests.post(token_url, data=form, verify=info["ca_bundle"]).json()
    assert again["error"] == "invalid_grant" and again["error_codes"] == [54005]
    rt_form = {"client_id": client["client_id"], "client_secret": client["client_secret"],
               "grant_type": "refresh_token", "refresh_token": ok["refresh_token"]}
    refreshed = requests.post(token_url, data=rt_form, verify=info["ca_bundle"]).json()
    assert refreshed["access_token"] and refreshed["refresh_token"] != ok["refresh_token"]
    unknown = requests.post(token_url, data={**rt_form, "refresh_token": "garbage"}, verify=info["ca_bundle"]).json()
    assert unknown["error"] == "invalid_grant" and unknown["error_codes"] == [9002313]


def test_authorize_rejects_wrong_redirect_and_client(info):
    client = info["clients"]["authcode"]
    base = f"{info['login_url']}/{info['tenant_id']}/oauth2/v2.0/authorize"
    r = requests.get(base, params={"client_id": client["client_id"], "response_type": "code", "scope": MDE_SCOPE,
                                   "redirect_uri": "https://evil.example/cb"}, verify=info["ca_bundle"],
                     allow_redirects=False)
    assert r.status_code == 400 and "AADSTS50011" in r.text
    r = requests.get(base, params={"client_id": "nope", "response_type": "code", "scope": MDE_SCOPE,
                                   "redirect_uri": client["redirect_uri"]}, verify=info["ca_bundle"],
                     allow_redirects=False)
    assert r.status_code == 400 and "AADSTS700016" in r.text


def test_managed_identity_with_msal(info, monkeypatch):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", info["imds_url"])
    resource = "https://api.securitycenter.microsoft.com"
    system = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=_session(info))
    result = system.acquire_token_for_client(resource=resource)
    assert "access_token" in result, result
    assert jwt.decode(result["access_token"], options={"verify_signature": False})["aud"] == resource
    user_id = info["managed_identity"]["user_assigned_client_id"]
    user = msal.ManagedIdentityClient(msal.UserAssignedManagedIdentity(client_id=user_id), http_client=_session(info))
    claims = jwt.decode(user.acquire_token_for_client(resource=resource)["access_token"],
                        options={"verify_signature": False})
    assert claims["appid"] == user_id
    unknown = msal.ManagedIdentityClient(msal.UserAssignedManagedIdentity(client_id="nope"),
                                         http_client=_session(info))
    assert unknown.acquire_token_for_client(resource=resource)["error_description"] == "Identity not found"


def test_imds_requires_metadata_header(info):
    url = f"{info['imds_url']}/metadata/identity/oauth2/token"
    params = {"api-version": "2018-02-01", "resource": "https://api.securitycenter.microsoft.com"}
    r = requests.get(url, params=params, verify=info["ca_bundle"])
    assert r.status_code == 400 and r.json() == {"error": "invalid_request",
                                                 "error_description": "Required metadata header not specified"}
    ok = requests.get(url, params=params, headers={"Metadata": "True"}, verify=info["ca_bundle"]).json()
    assert ok["token_type"] == "Bearer" and ok["expires_in"] == "3600" and int(ok["expires_on"]) > time.time()


def _oproxy_token(info, *, stamp=None, token=None, key=None) -> str:
    plaintext = f"{int(stamp if stamp is not None else time.time())}:{token or info['oproxy']['token']}".encode()
    nonce = os.urandom(12)
    aes = AESGCM(base64.b64decode(key or info["oproxy"]["key"]))
    return base64.b64encode(nonce + aes.encrypt(nonce, plaintext, None)).decode()


def test_oproxy_round_trip_and_errors(info):
    def call(**overrides):
        body = {"app_name": "ms-defender-atp", "registration_id": info["oproxy"]["registration_id"],
                "encrypted_token": _oproxy_token(info), "scope": None, "resource": ""}
        body.update(overrides)
        return requests.post(info["oproxy_url"], json=body, verify=info["ca_bundle"])

    ok = call()
    assert ok.status_code == 200 and ok.json()["refresh_token"] == "" and ok.json()["expires_in"] == 3600
    api = requests.get(f"{info['api_url']}/api/alerts?$top=1", verify=info["ca_bundle"],
                       headers={"Authorization": f"Bearer {ok.json()['access_token']}"})
    assert api.status_code == 200
    stale = call(encrypted_token=_oproxy_token(info, stamp=time.time() - 400))
    assert stale.status_code == 400 and "stale" in stale.json()["detail"]
    assert call(encrypted_token=_oproxy_token(info, key=base64.b64encode(b"k" * 32))).status_code == 400
    assert call(encrypted_token=_oproxy_token(info, token="wrong")).status_code == 401
    assert call(registration_id="unknown").status_code == 401
    assert call(app_name="other-app").status_code == 400


# ---------------------------------------------------------------------------------------------------------------
# Defender API: auth
# ---------------------------------------------------------------------------------------------------------------
def test_api_rejects_missing_invalid_and_expired_tokens(info):
    url = f"{info['api_url']}/api/machines?$top=1"
    r = requests.get(url, verify=info["ca_bundle"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized" and r.json()["error"]["target"]
    forged = jwt.encode({"aud": "https://api.securitycenter.microsoft.com", "exp": time.time() + 60}, "s" * 32)
    assert requests.get(url, headers={"Authorization": f"Bearer {forged}"}, verify=info["ca_bundle"]).status_code == 401
    graph = _token(info, scope="https://graph.microsoft.com/.default")
    r = requests.get(url, headers={"Authorization": f"Bearer {graph}"}, verify=info["ca_bundle"])
    assert r.status_code == 401 and "audience" in r.json()["error"]["message"]
    _admin(info, "POST", "/faults", json={"token_lifetime": 1})
    short = _token(info)
    _advance(info, 1)
    r = requests.get(url, headers={"Authorization": f"Bearer {short}"}, verify=info["ca_bundle"])
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_api_forbidden_without_role(info, store):
    limited = Api(info, "limited")
    assert limited.get("/api/machines?$top=1").status_code == 200
    machine = store.machines[0]["id"]
    r = limited.post(f"/api/machines/{machine}/isolate", json={"Comment": "x", "IsolationType": "Full"})
    assert r.status_code == 403
    assert r.json()["error"] == {"code": "Forbidden", "target": r.json()["error"]["target"],
                                 "message": "The application does not have any of the required application "
                                            "permissions (Machine.Isolate) to access the resource."}
    assert limited.get(f"/api/machines/{machine}/logonusers").status_code == 403


# ---------------------------------------------------------------------------------------------------------------
# Defender API: machines, alerts, OData
# ---------------------------------------------------------------------------------------------------------------
def test_machine_by_id_and_name_and_headers(api, store):
    machine = store.machines[5]
    r = api.get(f"/api/machines/{machine['id']}")
    assert r.status_code == 200 and r.json()["computerDnsName"] == machine["computerDnsName"]
    assert r.headers["Content-Type"] == "application/json; odata.metadata=minimal; odata.streaming=true"
    assert r.headers["OData-Version"] == "4.0"
    assert r.json()["@odata.context"].endswith("$metadata#Machines/$entity")
    assert api.get(f"/api/machines/{machine['computerDnsName'].upper()}").json()["id"] == machine["id"]
    assert api.get(f"/api/v1.0/machines/{machine['id']}").status_code == 200
    missing = api.get("/api/machines/" + "0" * 40)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ResourceNotFound"
    assert missing.json()["error"]["message"] == f"Machine {'0' * 40} was not found"
    unknown = api.get("/api/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "ResourceNotFound"


def _tagged(m, tag):
    return tag in m["machineTags"]


SOME_TIME = "2026-01-01T00:00:00.1234567Z"


@pytest.mark.parametrize("expr, predicate", [
    ("healthStatus eq 'Inactive'", lambda m: m["healthStatus"] == "Inactive"),
    ("healthStatus eq 'inactive'", lambda m: m["healthStatus"] == "Inactive"),
    ("healthStatus ne 'Active'", lambda m: m["healthStatus"] != "Active"),
    ("rbacGroupId gt 4311", lambda m: m["rbacGroupId"] > 4311),
    ("rbacGroupId ge 4311", lambda m: m["rbacGroupId"] >= 4311),
    ("rbacGroupId lt 4311", lambda m: m["rbacGroupId"] < 4311),
    ("rbacGroupId le 4311", lambda m: m["rbacGroupId"] <= 4311),
    ("osPlatform in ('Linux','macOS')", lambda m: m["osPlatform"] in ("Linux", "macOS")),
    ("osPlatform in ('Linux')", lambda m: m["osPlatform"] == "Linux"),
    ("not (healthStatus eq 'Active')", lambda m: m["healthStatus"] != "Active"),
    ("(osPlatform eq 'Linux' or osPlatform eq 'macOS') and riskScore eq 'High'",
     lambda m: m["osPlatform"] in ("Linux", "macOS") and m["riskScore"] == "High"),
    ("startswith(computerDnsName,'srv-')", lambda m: m["computerDnsName"].startswith("srv-")),
    ("machineTags/any(t: t eq 'O''Brien''s team')", lambda m: _tagged(m, "O'Brien's team")),
    ("machineTags/any()", lambda m: bool(m["machineTags"])),
    ("aadDeviceId eq null", lambda m: m["aadDeviceId"] is None),
    ("isAadJoined eq true", lambda m: m["isAadJoined"] is True),
    (f"lastSeen gt {SOME_TIME}", lambda m: m["lastSeen"] > SOME_TIME),
    ("lastSeen lt 2026-06-01T00:00:00+02:00", lambda m: m["lastSeen"] < "2026-05-31T22:00:00.0000000Z"),
])
def test_machine_filters(api, store, expr, predicate):
    r = api.get("/api/machines", params={"$filter": expr, "$top": 10000, "$count": "true"})
    assert r.status_code == 200, r.text
    expected = [m["id"] for m in store.machines if predicate(m)]
    assert r.json()["@odata.count"] == len(expected)
    assert [m["id"] for m in r.json()["value"]] == expected[:10000]


def test_filter_on_nested_collection(api, store):
    target = store.machines[42]["ipAddresses"][0]["ipAddress"]
    r = api.get("/api/machines", params={"$filter": f"ipAddresses/any(x: x/ipAddress eq '{target}')"})
    assert store.machines[42]["id"] in [m["id"] for m in r.json()["value"]]


@pytest.mark.parametrize("expr", [
    "unknownField eq 'x'", "healthStatus eq", "healthStatus eq 'Active' and", "lastSeen gt '2024-01-01'",
    "rbacGroupId eq 'x'", "machineTags eq 'VIP'", "length(computerDnsName) gt 3", "healthStatus eq 'it's'",
])
def test_invalid_filters_are_odata_errors(api, expr):
    r = api.get("/api/machines", params={"$filter": expr})
    assert r.status_code == 400, expr
    assert r.json()["error"]["code"] == "ODataError" and r.json()["error"]["message"].startswith("Invalid filter")


def test_top_limit_and_paging(api, store):
    r = api.get("/api/machines", params={"$top": 10001})
    assert r.status_code == 400
    assert r.json()["error"] == {"code": "ODataError", "target": r.json()["error"]["target"],
                                 "message": "The limit of '10000' for Top query has been exceeded. The value from "
                                            "the incoming request is '10001'."}
    first = api.get("/api/machines").json()
    assert len(first["value"]) == 10000 and "$skip=10000" in first["@odata.nextLink"]
    second = requests.get(first["@odata.nextLink"], headers=api.headers, verify=api.info["ca_bundle"]).json()
    assert len(second["value"]) == MACHINES - 10000 and "@odata.nextLink" not in second
    assert [m["id"] for m in first["value"] + second["value"]] == [m["id"] for m in store.machines]
    top = api.get("/api/machines", params={"$top": 10000, "$skip": 10000}).json()
    assert len(top["value"]) == MACHINES - 10000 and "@odata.nextLink" not in top
    assert "@odata.nextLink" not in api.get("/api/machines", params={"$top": 10000}).json()


def test_orderby_select(api, store):
    r = api.get("/api/machines", params={"$orderby": "rbacGroupId desc,computerDnsName", "$top": 50,
                                         "$select": "id,rbacGroupId,computerDnsName"}).json()["value"]
    expected = sorted(store.machines, key=lambda m: m["computerDnsName"])
    expected = sorted(expected, key=lambda m: m["rbacGroupId"], reverse=True)[:50]
    assert [m["id"] for m in r] == [m["id"] for m in expected]
    assert set(r[0]) == {"id", "rbacGroupId", "computerDnsName"}
    assert api.get("/api/machines", params={"$orderby": "nope"}).status_code == 400
    assert api.get("/api/machines", params={"$select": "nope"}).status_code == 400


def test_alerts_filters_expand_and_datetime_precision(api, store):
    alert = store.alerts[100]
    stamp = alert["alertCreationTime"]
    after = api.get("/api/alerts", params={"$filter": f"alertCreationTime gt {stamp}"}).json()["value"]
    assert alert["id"] not in [a["id"] for a in after]
    assert len(after) == sum(1 for a in store.alerts if a["alertCreationTime"] > stamp)
    at = api.get("/api/alerts", params={"$filter": f"alertCreationTime ge {stamp}"}).json()["value"]
    assert alert["id"] in [a["id"] for a in at]
    single = api.get(f"/api/alerts/{alert['id']}").json()  # as Microsoft documents it: evidence without $expand
    assert single["id"] == alert["id"] and single["evidence"] == store.evidence[alert["id"]]
    listed = api.get("/api/alerts", params={"$filter": f"id eq '{alert['id']}'"}).json()["value"][0]
    assert "evidence" not in listed
    expanded = api.get("/api/alerts", params={"$filter": f"id eq '{alert['id']}'", "$expand": "evidence"}).json()
    assert expanded["value"][0]["evidence"] and "entityType" in expanded["value"][0]["evidence"][0]
    combined = api.get("/api/alerts", params={
        "$filter": "severity in ('High','Medium') and status ne 'Resolved'", "$top": 10000}).json()["value"]
    assert len(combined) == sum(1 for a in store.alerts
                                if a["severity"] in ("High", "Medium") and a["status"] != "Resolved")
    assert api.get("/api/alerts/da000_1").status_code == 404


# ---------------------------------------------------------------------------------------------------------------
# Faults and admin
# ---------------------------------------------------------------------------------------------------------------
def test_rate_limit_per_app_and_family(info, api):
    _admin(info, "POST", "/faults", json={"rate_limit_per_minute": 3, "rate_limit_families": ["alerts"]})
    codes = [api.get("/api/alerts?$top=1").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = api.get("/api/alerts?$top=1")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.json()["error"]["code"] == "TooManyRequests"
    assert "Maximum allowed 3 per 00:01:00" in r.json()["error"]["message"]
    assert api.get("/api/machines?$top=1").status_code == 200  # other family
    assert Api(info, "limited").get("/api/alerts?$top=1").status_code == 200  # other app
    counters = _admin(info, "GET", "/counters").json()
    assert counters["responses"]["429"] >= 2
    _admin(info, "POST", "/faults", json={"rate_limit_per_minute": 1, "rate_limit_window_seconds": 1})
    assert [api.get("/api/alerts?$top=1").status_code for _ in range(2)] == [200, 429]
    _advance(info, 1)
    assert api.get("/api/alerts?$top=1").status_code == 200


def test_error_burst_latency_and_dropped_connection(info, api):
    _admin(info, "POST", "/faults", json={"error_burst": {"status": 503, "count": 2, "families": ["machines"]}})
    assert [api.get("/api/machines?$top=1").status_code for _ in range(3)] == [503, 503, 200]
    _admin(info, "POST", "/faults", json={"drop_connections": 1})
    with pytest.raises(requests.ConnectionError):
        api.get("/api/machines?$top=1")
    assert api.get("/api/machines?$top=1").status_code == 200
    _admin(info, "POST", "/faults", json={"latency_ms": 300})
    start = time.monotonic()
    api.get("/api/machines?$top=1")
    assert time.monotonic() - start >= 0.3
    assert _admin(info, "POST", "/faults", json={"bogus": 1}).status_code == 400
    assert _admin(info, "GET", "/faults").json()["latency_ms"] == 300


def test_admin_clock_moves_forward_only(info):
    before = _admin(info, "GET", "/clock").json()
    after = _admin(info, "POST", "/clock", json={"advance": 30}).json()
    assert after["offset_seconds"] == before["offset_seconds"] + 30 and after["now"] >= before["now"] + 30
    assert dt.datetime.fromisoformat(after["utc"]).timestamp() == pytest.approx(after["now"])
    for bad in ({"advance": -1}, {"advance": "soon"}, {"advance": True}, {}, {"advance": 1, "other": 2}, [1]):
        r = _admin(info, "POST", "/clock", json=bad)
        assert r.status_code == 400 and ("advance" in r.json()["error"] or "JSON object" in r.json()["error"]), bad
    assert _admin(info, "GET", "/clock").json()["offset_seconds"] == after["offset_seconds"]


def test_a_frozen_clock_moves_only_when_advanced_and_thaws_forward(info):
    frozen = _admin(info, "POST", "/clock", json={"frozen": True}).json()  # already frozen (see `server`): kept
    assert frozen["frozen"] is True
    assert _admin(info, "GET", "/clock").json()["now"] == frozen["now"]
    advanced = _admin(info, "POST", "/clock", json={"advance": 5}).json()
    assert advanced["now"] == frozen["now"] + 5 and advanced["frozen"] is True
    for bad in ({"frozen": "yes"}, {"frozen": 1}, {"advance": -1, "frozen": False}):
        assert _admin(info, "POST", "/clock", json=bad).status_code == 400, bad
    assert _admin(info, "GET", "/clock").json() == advanced  # a refused body changed nothing
    try:
        thawed = _admin(info, "POST", "/clock", json={"frozen": False}).json()
    finally:
        _admin(info, "POST", "/clock", json={"frozen": True})
    assert thawed["frozen"] is False and thawed["now"] >= advanced["now"]
    assert thawed["offset_seconds"] == advanced["offset_seconds"]


def test_advancing_a_frozen_clock_adds_exactly_what_was_asked():
    clock = Clock(offset=0.123456789)
    clock.freeze(True)
    for seconds in (1, 2, 10, 50, 0.5, 3600):
        before = clock.now()
        clock.advance(seconds)
        assert clock.now() - before == seconds  # an action due `seconds` after `before` is due now, not a hair later
    frozen_at = clock.now()
    clock.freeze(False)
    assert clock.now() >= frozen_at


def test_every_api_module_is_registered_once():
    api_modules = {p.stem for p in Path(emulator_server.__file__).parent.glob("api_*.py")}
    assert api_modules <= {m.__name__.rsplit(".", 1)[1] for m in emulator_server.ROUTE_MODULES}

    class Twice:
        ROUTES = [emulator_server.api_machines.ROUTES[0]]

    with pytest.raises(ValueError, match="declared by both"):
        emulator_server.assemble_routes(None, (emulator_server.api_machines, Twice))


def test_counters(info, api):
    _admin(info, "POST", "/counters/reset")
    api.get("/api/machines?$top=1")
    api.get("/api/machines?$top=2")
    api.get(f"/api/alerts/{'x'}")
    _token(info)
    counters = _admin(info, "GET", "/counters").json()
    assert counters["requests"]["GET /api/machines"] == 2
    assert counters["requests"]["GET /api/alerts/{id}"] == 1
    assert counters["token_requests"]["client_credentials"] == 1
    assert counters["responses"] == {"200": 3, "404": 1}


def test_alert_stream_follows_the_emulator_clock(server, info, store):
    before = len(store.alerts)
    stream = AlertStream(server.emulator, rate=40, seed=5)
    _advance(info, 1)
    reported = stream.step()
    added = store.alerts[before:]
    assert len(added) == reported >= 40  # 40 per emulator second, plus any burst sharing a timestamp
    assert all(a["lastUpdateTime"] >= a["alertCreationTime"] for a in added)


def test_generate_alerts_same_timestamp_and_late(info, api):
    r = _admin(info, "POST", "/alerts/generate", json={"count": 3, "same_timestamp": True, "severity": "High"})
    ids = r.json()["ids"]
    alerts = [api.get(f"/api/alerts/{i}").json() for i in ids]
    assert len({a["alertCreationTime"] for a in alerts}) == 1 and {a["severity"] for a in alerts} == {"High"}
    late = _admin(info, "POST", "/alerts/generate", json={"count": 1, "created_offset_seconds": -120}).json()["ids"]
    alert = api.get(f"/api/alerts/{late[0]}").json()
    created = dt.datetime.fromisoformat(alert["alertCreationTime"][:26])
    updated = dt.datetime.fromisoformat(alert["lastUpdateTime"][:26])
    assert 115 <= (updated - created).total_seconds() <= 125


# ---------------------------------------------------------------------------------------------------------------
# Machine actions
# ---------------------------------------------------------------------------------------------------------------
def _windows_machine(store, index=0):
    return [m for m in store.machines if m["osPlatform"] == "Windows11"][index]


def test_action_lifecycle_and_duplicate(info, api, store):
    machine = _windows_machine(store)
    _admin(info, "POST", "/faults", json={"action_delay": 100})
    r = api.post(f"/api/machines/{machine['id']}/isolate", json={"Comment": "contain", "IsolationType": "Selective"})
    assert r.status_code == 201, r.text
    action = r.json()
    assert (action["type"], action["status"], action["scope"]) == ("Isolate", "Pending", "Selective")
    assert action["requestor"] == info["clients"]["full"]["client_id"] and action["machineId"] == machine["id"]
    dup = api.post(f"/api/machines/{machine['id']}/isolate", json={"Comment": "again", "IsolationType": "Full"})
    assert dup.status_code == 400 and dup.json()["error"]["code"] == "ActiveRequestAlreadyExists"
    assert dup.json()["error"]["message"] == "Action is already in progress"
    assert api.get(f"/api/machineactions/{action['id']}").json()["status"] == "Pending"
    _advance(info, 50)
    assert api.get(f"/api/machineactions/{action['id']}").json()["status"] == "InProgress"
    _advance(info, 50)
    done = api.get(f"/api/machineactions/{action['id']}").json()
    assert done["status"] == "Succeeded" and done["lastUpdateDateTimeUtc"] > done["creationDateTimeUtc"]
    state = _admin(info, "GET", f"/machines/{machine['id']}").json()["state"]
    assert state["isolation"] == "Isolated"
    listed = api.get("/api/machineactions", params={
        "$filter": f"id in ('{action['id']}','00000000-0000-0000-0000-000000000000') and status eq 'Succeeded'"})
    assert [a["id"] for a in listed.json()["value"]] == [action["id"]]


def test_action_outcome_cancel_and_bodies(info, api, store):
    machine = _windows_machine(store, 1)
    _admin(info, "POST", "/faults", json={"action_outcome": "Failed", "action_delay": 10})
    scan = api.post(f"/api/machines/{machine['id']}/runAntiVirusScan", json={"Comment": "x", "ScanType": "Quick"})
    assert scan.status_code == 201 and scan.json()["scope"] == "Quick"
    _advance(info, 10)
    assert api.get(f"/api/machineactions/{scan.json()['id']}").json()["status"] == "Failed"
    cancel_final = api.post(f"/api/machineactions/{scan.json()['id']}/cancel", json={"Comment": "stop"})
    assert cancel_final.status_code == 400
    _admin(info, "POST", "/faults", json={"action_delay": 60})
    restrict = api.post(f"/api/machines/{machine['id']}/restrictCodeExecution", json={"Comment": "x"}).json()
    cancelled = api.post(f"/api/machineactions/{restrict['id']}/cancel", json={"Comment": "oops"}).json()
    assert cancelled["status"] == "Cancelled" and cancelled["cancellationComment"] == "oops"
    wrong_case = api.post(f"/api/machines/{machine['id']}/unisolate", json={"comment": "x"})
    assert wrong_case.status_code == 400 and wrong_case.json()["error"]["code"] == "InvalidRequestBody"
    missing = api.post(f"/api/machines/{machine['id']}/runAntiVirusScan", json={"Comment": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MissingRequiredParameter"
    bad_enum = api.post(f"/api/machines/{machine['id']}/isolate", json={"Comment": "x", "IsolationType": "Half"})
    assert bad_enum.status_code == 400 and bad_enum.json()["error"]["code"] == "InvalidInput"
    quarantine = api.post(f"/api/machines/{machine['id']}/StopAndQuarantineFile",
                          json={"Comment": "x", "Sha1": "A" * 40}).json()
    assert quarantine["relatedFileInfo"] == {"fileIdentifier": "a" * 40, "fileIdentifierType": "Sha1"}
    offboard = api.post(f"/api/machines/{machine['id']}/offboard", json={"Comment": "bye"})
    assert offboard.status_code == 200 and offboard.json()["type"] == "Offboard"
    investigation = api.post(f"/api/machines/{machine['id']}/startInvestigation", json={"Comment": "look"})
    assert investigation.status_code == 201 and investigation.json()["state"] == "Running"
    assert api.get(f"/api/investigations/{investigation.json()['id']}").json()["machineId"] == machine["id"]


def test_investigation_package_download(info, api, store):
    machine = _windows_machine(store, 2)
    _admin(info, "POST", "/faults", json={"action_delay": 10})
    action = api.post(f"/api/machines/{machine['id']}/collectInvestigationPackage", json={"Comment": "x"}).json()
    assert api.get(f"/api/machineactions/{action['id']}/getPackageUri").status_code == 404
    _advance(info, 10)
    link = api.get(f"/api/machineactions/{action['id']}/getPackageUri").json()["value"]
    package = requests.get(link, verify=info["ca_bundle"])
    assert package.status_code == 200
    assert "README.txt" in zipfile.ZipFile(io.BytesIO(package.content)).namelist()
    assert requests.get(link.replace("sig=", "sig=0"), verify=info["ca_bundle"]).status_code == 403
    _advance(info, PACKAGE_LINK_LIFETIME + 1)
    assert requests.get(link, verify=info["ca_bundle"]).status_code == 403  # the link expired


# ---------------------------------------------------------------------------------------------------------------
# Machines (related) and alerts (update, related entities)
# ---------------------------------------------------------------------------------------------------------------
def test_tags_logonusers_findbyip_and_machine_alerts(api, store):
    machine = store.machines[7]
    added = api.post(f"/api/machines/{machine['id']}/tags", json={"Value": "Emulator Tag", "Action": "Add"}).json()
    assert "Emulator Tag" in added["machineTags"]
    removed = api.post(f"/api/machines/{machine['id']}/tags", json={"Value": "Emulator Tag", "Action": "Remove"})
    assert "Emulator Tag" not in removed.json()["machineTags"]
    users = api.get(f"/api/machines/{machine['id']}/logonusers").json()["value"]
    assert users and users[0]["accountDomain"] == "contoso"
    when = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    found = api.get(f"/api/machines/findbyip(ip='{machine['lastIpAddress']}',timestamp={when})").json()["value"]
    assert machine["id"] in [m["id"] for m in found]
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    too_old = api.get(f"/api/machines/findbyip(ip='{machine['lastIpAddress']}',timestamp={old})")
    assert too_old.status_code == 400 and too_old.json()["error"]["code"] == "InvalidInput"
    alert = store.alerts[3]
    machine_alerts = api.get(f"/api/machines/{alert['machineId']}/alerts").json()["value"]
    assert alert["id"] in [a["id"] for a in machine_alerts]
    by_user = api.get(f"/api/users/{users[0]['accountName']}/machines").json()["value"]
    assert machine["id"] in [m["id"] for m in by_user]


def test_alert_update_and_create_by_reference(info, api, store):
    alert = next(a for a in store.alerts if a["status"] == "New")
    r = api.request("PATCH", f"/api/alerts/{alert['id']}", json={
        "status": "Resolved", "classification": "TruePositive", "determination": "Malware",
        "assignedTo": "me@contoso.example", "comment": "handled"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "Resolved" and r.json()["resolvedTime"]
    assert r.json()["comments"][-1]["comment"] == "handled"
    bad = api.request("PATCH", f"/api/alerts/{alert['id']}", json={"status": "Done"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidInput"
    assert api.request("PATCH", f"/api/alerts/{alert['id']}", json={"Status": "New"}).status_code == 400
    assert Api(info, "limited").request("PATCH", f"/api/alerts/{alert['id']}",
                                        json={"comment": "x"}).status_code == 403
    body = {"machineId": store.machines[0]["id"], "severity": "Low", "title": "Emulator reference alert",
            "description": "d", "recommendedAction": "r", "eventTime": "2026-01-01T00:00:00Z", "reportId": "1",
            "category": "Execution"}
    created = api.post("/api/alerts/CreateAlertByReference", json=body)
    assert created.status_code == 200 and created.json()["title"] == body["title"]
    merged = api.post("/api/alerts/CreateAlertByReference", json=body)
    assert merged.json()["id"] == created.json()["id"]
    incomplete = api.post("/api/alerts/CreateAlertByReference", json={k: body[k] for k in list(body)[:-1]})
    assert incomplete.status_code == 400


def test_alert_related_entities_and_investigations(api, store):
    with_ip = next(a for a in store.alerts if store.related(a["id"], "Ip"))
    ips = api.get(f"/api/alerts/{with_ip['id']}/ips").json()["value"]
    assert ips and set(ips[0]) == {"id"}
    assert with_ip["id"] in [a["id"] for a in api.get(f"/api/ips/{ips[0]['id']}/alerts").json()["value"]]
    with_url = next(a for a in store.alerts if store.related(a["id"], "Url"))
    hosts = api.get(f"/api/alerts/{with_url['id']}/domains").json()["value"]
    assert hosts and set(hosts[0]) == {"host"}
    assert api.get(f"/api/domains/{hosts[0]['host']}/alerts").json()["value"]
    with_file = next(a for a in store.alerts if store.related(a["id"], "File"))
    files = api.get(f"/api/alerts/{with_file['id']}/files").json()["value"]
    assert files and len(files[0]["sha1"]) == 40
    assert api.get(f"/api/files/{files[0]['sha1']}/alerts").json()["value"]
    assert api.get(f"/api/files/{files[0]['sha1']}/machines").json()["value"]
    with_user = next(a for a in store.alerts if a["relatedUser"])
    user = api.get(f"/api/alerts/{with_user['id']}/user").json()
    assert user["accountName"] == with_user["relatedUser"]["userName"]
    assert api.get(f"/api/users/{user['accountName']}/alerts").json()["value"]
    assert api.get("/api/ips/not-an-ip/alerts").status_code == 400
    investigations = api.get("/api/investigations", params={"$filter": "state eq 'Running'"}).json()["value"]
    assert all(i["state"] == "Running" for i in investigations)
    triggered = next(i for i in store.investigations if i["triggeringAlertId"])
    assert api.get(f"/api/investigations/{triggered['triggeringAlertId']}").json()["id"] == triggered["id"]


def test_seed_data_is_deterministic():
    first, second = (Store(seed=11, machines=300, alerts=60, tenant_id="t") for _ in range(2))
    assert [m["id"] for m in first.machines] == [m["id"] for m in second.machines]
    assert [m["computerDnsName"] for m in first.machines] == [m["computerDnsName"] for m in second.machines]
    assert [a["id"] for a in first.alerts] == [a["id"] for a in second.alerts]
    assert len({m["computerDnsName"] for m in first.machines}) == 300
    other = Store(seed=12, machines=300, alerts=60, tenant_id="t")
    assert other.machines[0]["id"] != first.machines[0]["id"]


# ---------------------------------------------------------------------------------------------------------------
# Command-line start-up contract
# ---------------------------------------------------------------------------------------------------------------
def test_command_line_ready_file_and_clean_shutdown(tmp_path):
    ready = tmp_path / "ready.json"
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "mde_emulator", "--port", "0", "--seed", "1", "--machines", "50",
                             "--alerts", "10", "--ready-file", str(ready), "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            info = wait_until_ready(proc, ready)
        except RuntimeError as exc:
            pytest.fail(f"{exc}: {proc.stderr.read() if proc.poll() is not None else ''}")
        assert stat.S_IMODE(ready.stat().st_mode) == 0o600
        assert set(info) == {"base_url", "api_url", "graph_url", "login_url", "oproxy_url", "imds_url", "admin_url",
                             "ca_bundle", "pid", "tenant_id", "clients", "oproxy", "managed_identity"}
        assert info["pid"] == proc.pid and info["ca_bundle"] == str((state / "ca.pem").resolve())
        assert info["oproxy_url"] == info["base_url"] + "/oproxy/obtain-token"
        assert set(info["clients"]) == {"full", "limited", "certificate", "authcode", "defender-hunting"}
        assert len(base64.b64decode(info["oproxy"]["key"])) == 32
        assert requests.get(f"{info['api_url']}/api/machines", headers={"Authorization": f"Bearer {_token(info)}"},
                            verify=info["ca_bundle"]).json()["value"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert not ready.exists()
    assert info["base_url"] in out and info["ca_bundle"] in out and str(ready) in out
    assert info["oproxy"]["token"] not in out and info["clients"]["full"]["client_secret"] not in out

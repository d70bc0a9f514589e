"""The emulator's Indicators API: submit-or-update, validation codes, listing, import with per-item results,
BatchDelete, the 15,000-active cap, the own-indicators rule for apps without Ti.ReadWrite.All, and the import
quota switch."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import pytest
import requests

from mde_emulator.identity import MDE_APP_ID_URI
from mde_emulator.server import EmulatorServer, Options

DEFAULT_FAULTS = {"rate_limit_per_minute": None, "rate_limit_families": None, "rate_limit_window_seconds": 60}
FUTURE = "2099-01-01T00:00:00Z"


def sha256(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def indicator(value: str, kind: str = "FileSha256", **extra) -> dict:
    return {"indicatorValue": value, "indicatorType": kind, "action": "Block", "title": f"t {value[:12]}",
            "description": "d", **extra}


class Api:
    """A Defender API caller with a token carrying exactly `roles` (issued by the emulator's signing key)."""

    def __init__(self, server: EmulatorServer, roles: list[str], appid: str | None = None):
        self.base, self.ca = server.base_url, str(server.ca_path)
        self.appid = appid or str(uuid.uuid4())
        token = server.emulator.identity.issue_access_token(appid=self.appid, audience=MDE_APP_ID_URI, roles=roles,
                                                             oid=str(uuid.uuid4()))
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.base}{path}", headers=self.headers, verify=self.ca, timeout=60,
                                **kwargs)

    def submit(self, body: dict) -> requests.Response:
        return self.call("POST", "/api/indicators", json=body)

    def imported(self, items: list[dict]) -> list[dict]:
        r = self.call("POST", "/api/indicators/import", json={"Indicators": items})
        assert r.status_code == 200, r.text
        return r.json()["value"]

    def values(self, query: str = "") -> list[str]:
        r = self.call("GET", f"/api/indicators{query}")
        assert r.status_code == 200, r.text
        return [i["indicatorValue"] for i in r.json()["value"]]


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(Options(seed=5, machines=50, alerts=60)) as srv:
        srv.emulator.clock.freeze(True)  # emulator time moves only when a test advances it
        yield srv


@pytest.fixture
def api(server):
    yield Api(server, ["Ti.ReadWrite.All"])
    requests.post(f"{server.base_url}/admin/faults", json=DEFAULT_FAULTS, verify=str(server.ca_path), timeout=10)


def test_submit_creates_then_updates_the_same_type_and_value(api):
    value = sha256("upsert")
    first = api.submit(indicator(value, application="Playbook", severity="High", rbacGroupNames=["Servers"],
                                 expirationTime=FUTURE))
    assert first.status_code == 200, first.text
    created = first.json()
    assert created["@odata.context"].endswith("#Indicators/$entity")
    assert created["id"].isdigit() and created["indicatorValue"] == value and created["action"] == "Block"
    assert created["createdBy"] == api.appid and created["sourceType"] == "AadApp"
    assert created["rbacGroupNames"] == ["Servers"] and created["rbacGroupIds"] == [4310]
    assert created["expirationTime"] == "2099-01-01T00:00:00.0000000Z"
    assert created["creationTimeDateTimeUtc"] == created["lastUpdateTime"]

    second = api.submit(indicator(value.upper(), action="Audit", generateAlert=True, application="Other",
                                  title="renamed"))
    updated = second.json()
    assert second.status_code == 200
    assert updated["id"] == created["id"]  # same type and value (hashes compare case-insensitively)
    assert updated["action"] == "Audit" and updated["title"] == "renamed" and updated["generateAlert"] is True
    assert updated["application"] == "Playbook"  # application is kept on update
    assert updated["creationTimeDateTimeUtc"] == created["creationTimeDateTimeUtc"]
    assert api.values(f"?$filter=indicatorValue eq '{value}'") == [value.upper()]

    other_type = api.submit(indicator(value[:40], "FileSha1")).json()
    assert other_type["id"] != created["id"]


@pytest.mark.parametrize("body, code", [
    (indicator("abc", "FileSha1"), "InvalidHashValue"),
    (indicator(sha256(1)[:40], "FileSha256"), "InvalidHashValue"),
    (indicator("z" * 32, "FileMd5"), "InvalidHashValue"),
    (indicator("g" * 40, "CertificateThumbprint"), "InvalidHashValue"),
    (indicator("10.0.0.0/8", "IpAddress"), "InvalidIpAddress"),
    (indicator("300.1.1.1", "IpAddress"), "InvalidIpAddress"),
    (indicator("bad_domain..com", "DomainName"), "InvalidDomainName"),
    (indicator("ftp://example.com/x", "Url"), "InvalidUrl"),
    (indicator("http:// spaced.example/x", "Url"), "InvalidUrl"),
    (indicator("evil.example", "DomainName", educateUrl="not a url"), "InvalidUrl"),
    (indicator(sha256(2), action="Warn"), "InvalidInput"),
    (indicator("evil.example", "DomainName", action="BlockAndRemediate"), "InvalidInput"),
    (indicator(sha256(3), action="Audit"), "InvalidInput"),
    (indicator(sha256(4), action="AlertAndBlock"), "InvalidInput"),
    (indicator(sha256(5), expirationTime="2001-01-01T00:00:00Z"), "InvalidInput"),
    (indicator(sha256(6), rbacGroupNames=["No such group"]), "InvalidInput"),
    (indicator(sha256(7), severity="Critical"), "InvalidInput"),
    (indicator(sha256(8), indicatorType="FileSha512"), "InvalidInput"),
    ({**indicator(sha256(9)), "title": ""}, "MissingRequiredParameter"),
    ({**indicator(sha256(10)), "Title": "x"}, "InvalidRequestBody"),
])
def test_submit_refuses_invalid_indicators_with_the_service_codes(api, body, code):
    r = api.submit(body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code, r.text
    assert api.values(f"?$filter=indicatorValue eq '{body['indicatorValue']}'") == []


@pytest.mark.parametrize("body", [
    indicator("2001:db8::1", "IpAddress", action="Allowed"),
    indicator("https://evil.example/path?q=1", "Url", action="Warn", educateUrl="https://intranet.example/why"),
    indicator("sub.evil-domain.example", "DomainName", action="Audit", generateAlert=True),
    indicator(sha256(11)[:40], "CertificateThumbprint", action="BlockAndRemediate"),
    indicator(sha256(12)[:32], "FileMd5", action="BlockAndRemediate", recommendedActions="Reimage"),
])
def test_submit_accepts_each_type_with_a_suitable_action(api, body):
    r = api.submit(body)
    assert r.status_code == 200, r.text
    assert r.json()["indicatorType"] == body["indicatorType"] and r.json()["action"] == body["action"]


def test_get_delete_and_listing_filters(api):
    made = {k: api.submit(indicator(v, k, title="listing probe")).json()
            for k, v in (("FileSha256", sha256("list")), ("DomainName", "probe.example"))}
    one = made["DomainName"]
    got = api.call("GET", f"/api/indicators/{one['id']}")
    assert got.status_code == 200 and got.json()["indicatorValue"] == "probe.example"
    assert api.values("?$filter=title eq 'listing probe' and indicatorType eq 'DomainName'") == ["probe.example"]
    assert sorted(api.values("?$filter=title eq 'listing probe'")) == sorted(["probe.example", sha256("list")])
    everything = api.values()
    assert api.values("?$top=2&$skip=1") == everything[1:3]
    assert api.call("GET", "/api/indicators?$filter=bogus eq 1").json()["error"]["code"] == "ODataError"

    assert api.call("DELETE", f"/api/indicators/{one['id']}").status_code == 204
    assert api.call("GET", f"/api/indicators/{one['id']}").status_code == 404
    assert api.call("DELETE", f"/api/indicators/{one['id']}").status_code == 404
    assert api.call("DELETE", "/api/indicators/999999999").json()["error"]["code"] == "ResourceNotFound"


def test_import_answers_every_item_in_order_including_failures(api):
    good = [indicator(sha256(f"imp{i}")) for i in range(4)]
    bad_hash = indicator("nothex", "FileSha1")
    bad_action = indicator("warn.example", "DomainName", action="BlockAndRemediate")
    results = api.imported([good[0], bad_hash, good[1], bad_action, good[2], good[3], good[0]])
    assert [r["indicator"] for r in results] == [good[0]["indicatorValue"], "nothex", good[1]["indicatorValue"],
                                                 "warn.example", good[2]["indicatorValue"], good[3]["indicatorValue"],
                                                 good[0]["indicatorValue"]]
    assert [r["isFailed"] for r in results] == [False, True, False, True, False, False, False]
    assert results[1]["failureReason"].startswith("InvalidHashValue") and results[1]["id"] is None
    assert results[3]["failureReason"].startswith("InvalidInput")
    assert results[6]["id"] == results[0]["id"]  # the repeat updated the first one
    assert len(api.values(f"?$filter=indicatorValue eq '{good[0]['indicatorValue']}'")) == 1


def test_import_and_batch_delete_limits(api):
    r = api.call("POST", "/api/indicators/import",
                 json={"Indicators": [indicator(sha256(f"big{i}")) for i in range(501)]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "MaximumBatchSizeExceeded"
    assert api.call("POST", "/api/indicators/import", json={"Indicators": []}).status_code == 400
    assert api.call("POST", "/api/indicators/import", json={"indicators": []}).json()["error"]["code"] == \
        "InvalidRequestBody"
    r = api.call("POST", "/api/indicators/BatchDelete", json={"IndicatorIds": [str(i) for i in range(501)]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "MaximumBatchSizeExceeded"
    assert api.call("POST", "/api/indicators/BatchDelete", json={"IndicatorIds": ["../1"]}).status_code == 400


def test_batch_delete_is_all_or_nothing(api):
    ids = [r["id"] for r in api.imported([indicator(sha256(f"bd{i}")) for i in range(3)])]
    r = api.call("POST", "/api/indicators/BatchDelete", json={"IndicatorIds": ids + ["987654321"]})
    assert r.status_code == 404 and "987654321" in r.json()["error"]["message"]
    assert all(api.call("GET", f"/api/indicators/{i}").status_code == 200 for i in ids)
    assert api.call("POST", "/api/indicators/BatchDelete", json={"IndicatorIds": ids}).status_code == 204
    assert all(api.call("GET", f"/api/indicators/{i}").status_code == 404 for i in ids)


def test_an_app_without_the_all_permission_sees_only_its_own(server, api):
    own = Api(server, ["Ti.ReadWrite"])
    seeded = api.call("GET", "/api/indicators?$filter=title eq 'Seeded FileSha1 indicator 1'").json()["value"][0]
    assert seeded["createdBy"] != own.appid
    assert own.values() == []
    mine = own.submit(indicator(sha256("own"))).json()
    assert own.values() == [sha256("own")]
    assert sha256("own") in api.values()  # the .All app sees it too
    assert own.call("GET", f"/api/indicators/{seeded['id']}").status_code == 404
    assert own.call("DELETE", f"/api/indicators/{seeded['id']}").status_code == 404
    r = own.call("POST", "/api/indicators/BatchDelete", json={"IndicatorIds": [mine["id"], seeded["id"]]})
    assert r.status_code == 404 and own.values() == [sha256("own")]
    r = own.submit(indicator(seeded["indicatorValue"], seeded["indicatorType"]))
    assert r.status_code == 403
    assert own.call("DELETE", f"/api/indicators/{mine['id']}").status_code == 204


def test_seed_carries_legacy_actions_and_other_creators(api):
    r = api.call("GET", "/api/indicators?$filter=startswith(title,'Seeded')")
    seeded = r.json()["value"]
    assert {i["action"] for i in seeded} >= {"AlertAndBlock", "Alert", "Block"}
    assert {i["sourceType"] for i in seeded} == {"AadApp", "User"}


def test_indicators_need_a_ti_permission(server):
    r = Api(server, ["Machine.Read.All"]).call("GET", "/api/indicators")
    assert r.status_code == 403 and r.json()["error"]["code"] == "Forbidden"


def test_import_quota_switch_answers_429_with_retry_after(server, api):
    r = requests.post(f"{server.base_url}/admin/faults", verify=str(server.ca_path), timeout=10,
                      json={"rate_limit_per_minute": 30, "rate_limit_families": ["indicators_import"]})
    assert r.status_code == 200
    codes = [api.call("POST", "/api/indicators/import", json={"Indicators": [indicator(sha256(f"q{i}"))]})
             .status_code for i in range(31)]
    assert codes == [200] * 30 + [429]
    r = api.call("POST", "/api/indicators/import", json={"Indicators": [indicator(sha256("q-late"))]})
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert "Maximum allowed 30 per 00:01:00" in r.json()["error"]["message"]
    assert api.submit(indicator(sha256("q-single"))).status_code == 200  # the submit quota is separate


def test_the_tenant_holds_at_most_15000_active_indicators():
    with EmulatorServer(Options(seed=6, machines=10, alerts=10)) as srv:
        api = Api(srv, ["Ti.ReadWrite.All"])
        existing = len(api.values())
        values = [sha256(f"cap{i}") for i in range(15000 - existing)]
        soon = (srv.emulator.clock.utcnow() + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for start in range(0, len(values), 500):
            extra = {"expirationTime": soon} if start == 0 else {}  # the first 500 expire in an hour
            batch = [indicator(v, **extra) for v in values[start:start + 500]]
            assert not any(r["isFailed"] for r in api.imported(batch))
        r = api.submit(indicator(sha256("one too many")))
        assert r.status_code == 400 and "15000" in r.json()["error"]["message"]
        over = api.imported([indicator(sha256("over")), indicator(values[0], title="updated at the cap")])
        assert over[0]["isFailed"] and "15000" in over[0]["failureReason"] and not over[1]["isFailed"]
        page = api.call("GET", "/api/indicators").json()
        assert len(page["value"]) == 10000 and "$skip=10000" in page["@odata.nextLink"]
        rest = requests.get(page["@odata.nextLink"], headers=api.headers, verify=api.ca, timeout=60).json()
        assert len(rest["value"]) == 5000 and "@odata.nextLink" not in rest
        first_id = next(r["id"] for r in api.imported([indicator(values[-1])]))
        assert api.call("DELETE", f"/api/indicators/{first_id}").status_code == 204
        assert api.submit(indicator(sha256("room again"))).status_code == 200
        assert api.submit(indicator(sha256("no room"))).status_code == 400

        requests.post(f"{srv.base_url}/admin/clock", json={"advance": 7200}, verify=api.ca, timeout=10)
        later = Api(srv, ["Ti.ReadWrite.All"])
        results = later.imported([indicator(sha256(f"after expiry {i}")) for i in range(499)])
        assert not any(r["isFailed"] for r in results)  # expired indicators no longer count against the cap


def test_expiration_is_judged_by_the_emulator_clock(server, api):
    soon = (server.emulator.clock.utcnow() + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = api.submit(indicator(sha256("expiring"), expirationTime=soon)).json()
    assert made["expirationTime"] == soon[:19] + ".0000000Z"
    requests.post(f"{server.base_url}/admin/clock", json={"advance": 7200}, verify=str(server.ca_path), timeout=10)
    later = Api(server, ["Ti.ReadWrite.All"])  # the old token expired with the clock too
    r = later.submit(indicator(sha256("expiring-2"), expirationTime=soon))
    assert r.status_code == 400 and "in the past" in r.json()["error"]["message"]

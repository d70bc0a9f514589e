"""Indicators: every command at the HTTP boundary through main(), every legacy-argument mapping, the batch import
(chunks, pacing, per-item outcomes), bulk delete, the 15,000 cap, and hostile values in every argument."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import requests_mock as rm
import yaml
from conftest import API
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import demistomock
import MicrosoftDefenderForEndpoint as mde
from xsoar_local.runtime import Runtime

SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
MD5 = "a3cca2b2aa1e3b5b3b5aad99a8529074"
INDICATORS = f"{API}/indicators"
CONTEXT = "MicrosoftATP.Indicators(val.id && val.id == obj.id)"
FILE_KEY = mde.FILE_CONTEXT_KEY
DBOT_KEY = mde.DBOT_SCORE_KEY
IP_KEY, DOMAIN_KEY, URL_KEY = (mde.STANDARD_CONTEXTS[k][0] for k in ("IpAddress", "DomainName", "Url"))
FUTURE = "2099-01-01T00:00:00Z"


def api_indicator(value: str = SHA256, kind: str = "FileSha256", indicator_id: str = "995", **overrides) -> dict:
    """An indicator as Microsoft returns it."""
    return {"id": indicator_id, "indicatorValue": value, "indicatorType": kind, "action": "Block",
            "application": "demo-test", "source": "TestPrdApp", "sourceType": "AadApp", "title": "test",
            "creationTimeDateTimeUtc": "2024-05-01T10:54:23.2009016Z", "createdBy": "45097602-aaaa",
            "expirationTime": "2099-12-12T00:00:00Z", "lastUpdateTime": "2024-05-02T10:54:23.2009016Z",
            "lastUpdatedBy": "TestPrdApp", "severity": "High", "description": "test",
            "recommendedActions": "Reimage", "rbacGroupNames": ["Servers"], "rbacGroupIds": [4310],
            "generateAlert": True, "createdBySource": "PublicApi", "createdByDisplayName": "Python SDK",
            "externalID": "ext-1", "educateUrl": None, "mitreTechniques": ["T1059"], "historicalDetection": False,
            "lookBackPeriod": None, "category": 1, **overrides}


def api_calls(requests_mock) -> list:
    return [r for r in requests_mock.request_history if r.url.startswith(API)]


def query(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}


@pytest.fixture
def ti(xsoar, entra, requests_mock):
    """The Indicators API as requests_mock answers it: nothing exists unless a test registers more."""
    requests_mock.get(INDICATORS, json={"value": []})
    return requests_mock


def created_body(requests_mock) -> dict:
    posts = [r for r in api_calls(requests_mock) if r.method == "POST" and urlparse(r.url).path == "/api/indicators"]
    assert len(posts) == 1
    return posts[0].json()


# ---- sc-indicator-create / -update -------------------------------------------------------------------


def test_create_submits_every_field_and_says_created(xsoar, ti):
    ti.post(INDICATORS, json=api_indicator(action="BlockAndRemediate", generateAlert=False))
    run = xsoar.run("microsoft-atp-sc-indicator-create", {
        "indicator_value": SHA256.upper(), "indicator_type": "FileSha256", "action": "BlockAndRemediate",
        "severity": "High", "indicator_title": "Ransomware", "indicator_description": "from the playbook",
        "indicator_application": "demo-test", "recommended_actions": "Reimage", "rbac_group_names": "Servers,Finance"})
    now = datetime.fromtimestamp(xsoar.clock.now(), timezone.utc)
    lookup = api_calls(ti)[0]
    assert lookup.method == "GET" and query(lookup) == {
        "$filter": f"indicatorValue eq '{SHA256}' and indicatorType eq 'FileSha256'", "$top": "1", "$skip": "0"}
    assert created_body(ti) == {
        "indicatorValue": SHA256, "indicatorType": "FileSha256", "action": "BlockAndRemediate", "title": "Ransomware",
        "description": "from the playbook", "generateAlert": False,
        "expirationTime": mde.format_datetime(now + timedelta(days=14)), "severity": "High",
        "application": "demo-test", "recommendedActions": "Reimage", "rbacGroupNames": ["Servers", "Finance"]}
    assert "Indicator 995 created" in run.entry["HumanReadable"]
    context = run.context
    indicator = context[CONTEXT][0]
    assert indicator["id"] == "995" and indicator["indicatorValue"] == SHA256
    assert indicator["action"] == "BlockAndRemediate" and indicator["rbacGroupNames"] == ["Servers"]
    assert indicator["mitreTechniques"] == ["T1059"] and indicator["category"] == 1
    assert context[FILE_KEY] == [{"SHA256": SHA256}]
    assert context[DBOT_KEY] == [{"Indicator": SHA256, "Type": "file", "Vendor": mde.VENDOR, "Score": 3}]


def test_update_of_an_existing_value_says_updated_and_sends_the_same_submit(xsoar, ti):
    ti.get(INDICATORS, json={"value": [api_indicator("evil.example", "DomainName")]})
    ti.post(INDICATORS, json=api_indicator("evil.example", "DomainName", action="Warn",
                                           educateUrl="https://intranet.example/why"))
    run = xsoar.run("microsoft-atp-sc-indicator-update", {
        "indicator_value": "evil.example", "indicator_type": "DomainName", "action": "Warn",
        "indicator_title": "t", "indicator_description": "d", "expiration_time": FUTURE,
        "educate_url": "https://intranet.example/why"})
    body = created_body(ti)
    assert body["action"] == "Warn" and body["expirationTime"] == FUTURE and body["educateUrl"].endswith("/why")
    assert "Indicator 995 updated" in run.entry["HumanReadable"]
    assert run.context[DOMAIN_KEY] == [{"Name": "evil.example"}]
    assert run.context[DBOT_KEY][0]["Score"] == 2


@pytest.mark.parametrize("kind, value, context_key, field, score_type", [
    ("FileSha1", SHA1, FILE_KEY, "SHA1", "file"),
    ("FileMd5", MD5, FILE_KEY, "MD5", "file"),
    ("IpAddress", "2001:db8::1", IP_KEY, "Address", "ip"),
    ("Url", "https://evil.example/a?b=1", URL_KEY, "Data", "url"),
])
def test_each_type_gets_its_standard_context(xsoar, ti, kind, value, context_key, field, score_type):
    ti.post(INDICATORS, json=api_indicator(value, kind, action="Allowed"))
    run = xsoar.run("microsoft-atp-sc-indicator-create", {
        "indicator_value": value, "indicator_type": kind, "action": "Allowed", "indicator_title": "t",
        "indicator_description": "d"})
    assert run.context[context_key] == [{field: value}]
    assert run.context[DBOT_KEY] == [{"Indicator": value, "Type": score_type, "Vendor": mde.VENDOR, "Score": 1}]


def test_certificate_thumbprints_are_submitted_without_a_standard_context(xsoar, ti):
    ti.post(INDICATORS, json=api_indicator(SHA1, "CertificateThumbprint", action="Allowed"))
    run = xsoar.run("microsoft-atp-sc-indicator-create", {
        "indicator_value": SHA1, "indicator_type": "CertificateThumbprint", "action": "Allowed",
        "indicator_title": "t", "indicator_description": "d"})
    assert created_body(ti)["indicatorType"] == "CertificateThumbprint"
    assert set(run.context) == {CONTEXT}


def test_audit_raises_alerts_by_default(xsoar, ti):
    ti.post(INDICATORS, json=api_indicator(action="Audit"))
    xsoar.run("microsoft-atp-sc-indicator-create", {
        "indicator_value": SHA256, "indicator_type": "FileSha256", "action": "Audit", "indicator_title": "t",
        "indicator_description": "d"})
    assert created_body(ti)["generateAlert"] is True


BASE = {"indicator_value": SHA256, "indicator_type": "FileSha256", "action": "Block", "indicator_title": "t",
        "indicator_description": "d"}


@pytest.mark.parametrize("changes, named", [
    ({"indicator_value": SHA1}, "indicator_value"),
    ({"indicator_value": "g" * 64}, "indicator_value"),
    ({"indicator_type": "FileMd5"}, "indicator_value"),
    ({"indicator_type": "CertificateThumbprint"}, "indicator_value"),
    ({"indicator_type": "IpAddress", "indicator_value": "10.0.0.0/8"}, "CIDR"),
    ({"indicator_type": "IpAddress", "indicator_value": "fe80::1%eth0"}, "indicator_value"),
    ({"indicator_type": "IpAddress", "indicator_value": "300.1.1.1"}, "indicator_value"),
    ({"indicator_type": "DomainName", "indicator_value": "https://evil.example"}, "indicator_value"),
    ({"indicator_type": "DomainName", "indicator_value": "bad..example"}, "indicator_value"),
    ({"indicator_type": "Url", "indicator_value": "ftp://evil.example/x"}, "indicator_value"),
    ({"indicator_type": "Url", "indicator_value": "http://exa mple.com/x"}, "indicator_value"),
    ({"indicator_type": "Sha512"}, "indicator_type"),
    ({"action": "Warn"}, "action=Warn"),
    ({"action": "AlertAndBlock"}, "action"),
    ({"indicator_type": "Url", "indicator_value": "https://evil.example/", "action": "BlockAndRemediate"},
     "action=BlockAndRemediate"),
    ({"action": "Audit", "generate_alert": "false"}, "generate_alert"),
    ({"generate_alert": "maybe"}, "generate_alert"),
    ({"expiration_time": "2001-01-01T00:00:00Z"}, "expiration_time"),
    ({"expiration_time": "3 days ago"}, "expiration_time"),
    ({"expiration_time": "next tuesday"}, "expiration_time"),
    ({"severity": "Critical"}, "severity"),
    ({"educate_url": "https://intranet.example/why"}, "educate_url"),
    ({"indicator_type": "Url", "indicator_value": "https://evil.example/", "educate_url": "not a url"},
     "educate_url"),
    ({"indicator_title": " "}, "indicator_title"),
    ({"indicator_description": ""}, "indicator_description"),
])
def test_invalid_input_is_refused_before_any_call_naming_the_argument(xsoar, ti, changes, named):
    run = xsoar.run("microsoft-atp-sc-indicator-create", {**BASE, **changes})
    assert named in run.error
    assert api_calls(ti) == []


def test_a_create_refused_for_the_cap_says_so_and_how_many_exist(xsoar, ti):
    ti.post(INDICATORS, status_code=400, json={"error": {
        "code": "InvalidInput", "message": "The maximum number of active indicators (15000) for the tenant has been "
                                           "reached.", "target": "c1"}})
    active = [api_indicator(indicator_id=str(i)) for i in range(3)]
    ti.get(INDICATORS, [{"json": {"value": []}}, {"json": {"value": active}}])
    run = xsoar.run("microsoft-atp-sc-indicator-create", BASE)
    assert "at most 15,000 active indicators" in run.error and "3 active indicators are visible" in run.error
    count_query = query(api_calls(ti)[-1])["$filter"]
    assert re.fullmatch(r"\(expirationTime gt \S+Z\) or \(\(expirationTime eq null\)\)", count_query)


def test_other_refusals_keep_microsofts_reason(xsoar, ti):
    ti.post(INDICATORS, status_code=403, json={"error": {"code": "Forbidden", "message": "Not allowed", "target": "x"}})
    run = xsoar.run("microsoft-atp-sc-indicator-create", BASE)
    assert "HTTP 403 Forbidden: Not allowed" in run.error


# ---- list / get-by-id -----------------------------------------------------------------------------


def test_list_filters_with_the_odata_builder_and_pages(xsoar, ti):
    ti.get(INDICATORS, [{"json": {"value": [api_indicator(indicator_id="1"), api_indicator(indicator_id="2")],
                                  "@odata.nextLink": f"{INDICATORS}?$top=2&$skip=2"}},
                        {"json": {"value": [api_indicator(indicator_id="3", action="AlertAndBlock")]}}])
    run = xsoar.run("microsoft-atp-sc-indicator-list", {
        "limit": "0", "skip": "4", "indicator_value": "o'brien.example", "indicator_title": "t",
        "indicator_type": "DomainName"})
    first, second = api_calls(ti)
    assert query(first) == {"$filter": "indicatorValue eq 'o''brien.example' and title eq 't' and "
                                       "indicatorType eq 'DomainName'", "$top": "10000", "$skip": "4"}
    assert query(second) == {"$top": "2", "$skip": "2"}
    assert [i["id"] for i in run.context[CONTEXT]] == ["1", "2", "3"]
    assert run.context[CONTEXT][2]["action"] == "AlertAndBlock"  # legacy actions pass through
    assert [s["Score"] for s in run.context[DBOT_KEY]] == [3, 3, 3]


def test_list_defaults_to_fifty_and_explains_an_empty_result(xsoar, ti):
    run = xsoar.run("microsoft-atp-sc-indicator-list", {})
    assert query(api_calls(ti)[0]) == {"$top": "50", "$skip": "0"}
    assert "sees only the indicators it created" in run.entry["HumanReadable"]
    assert run.context == {}


def test_get_by_id(xsoar, ti):
    ti.get(f"{INDICATORS}/995", json=api_indicator("198.51.100.7", "IpAddress"))
    run = xsoar.run("microsoft-atp-sc-indicator-get-by-id", {"indicator_id": "995"})
    assert run.context[CONTEXT][0]["indicatorValue"] == "198.51.100.7"
    assert run.context[IP_KEY] == [{"Address": "198.51.100.7"}]


@pytest.mark.parametrize("bad", ["..", "995/../../machines", "abc", "", "99 5", "1" * 25])
def test_get_by_id_refuses_ids_that_are_not_numbers(xsoar, ti, bad):
    run = xsoar.run("microsoft-atp-sc-indicator-get-by-id", {"indicator_id": bad})
    assert "indicator_id must be a numeric indicator ID" in run.error
    assert api_calls(ti) == []


# ---- delete -----------------------------------------------------------------------------------------


def test_delete_one(xsoar, ti):
    ti.delete(f"{INDICATORS}/995", status_code=204)
    run = xsoar.run("microsoft-atp-sc-indicator-delete", {"indicator_id": "995"})
    assert "995" in run.entry["HumanReadable"]
    assert [r.method for r in api_calls(ti)] == ["DELETE"]


def test_delete_many_uses_batch_delete_in_chunks_of_500(xsoar, ti):
    ti.post(f"{INDICATORS}/BatchDelete", status_code=204)
    ids = [str(i) for i in range(1, 702)]
    run = xsoar.run("microsoft-atp-sc-indicator-delete", {"indicator_id": ",".join(ids)})
    bodies = [r.json()["IndicatorIds"] for r in api_calls(ti)]
    assert bodies == [ids[:500], ids[500:]]
    assert run.entry["Contents"]["deleted"] == ids


def test_batch_delete_with_a_missing_id_deletes_the_others_and_reports_it(xsoar, ti):
    batch = ti.post(f"{INDICATORS}/BatchDelete", [
        {"status_code": 404, "json": {"error": {"code": "ResourceNotFound", "message": "Indicators not found: 7"}}},
        {"status_code": 204}])
    ti.get(INDICATORS, json={"value": [api_indicator(indicator_id="5"), api_indicator(indicator_id="6")]})
    run = xsoar.run("microsoft-atp-sc-indicator-delete", {"indicator_id": "5,6,7,abc"})
    assert [r.json()["IndicatorIds"] for r in batch.request_history] == [["5", "6", "7"], ["5", "6"]]
    assert run.entry["Contents"]["deleted"] == ["5", "6"]
    failed = {f["id"]: f["error"] for f in run.entry["Contents"]["failed"]}
    assert "numeric indicator ID" in failed["abc"] and "No such indicator" in failed["7"]


def test_delete_reports_an_error_when_nothing_was_deleted(xsoar, ti):
    ti.delete(f"{INDICATORS}/7", status_code=404, json={"error": {"code": "NotFound", "message": "gone"}})
    run = xsoar.run("microsoft-atp-sc-indicator-delete", {"indicator_id": "7"})
    assert "No indicator was deleted" in run.error and "HTTP 404" in run.error


# ---- batch update -------------------------------------------------------------------------------------


def item(value: str, kind: str = "FileSha256", **extra) -> dict:
    return {"indicatorValue": value, "indicatorType": kind, "action": "Block", "title": "t", "description": "d",
            **extra}


def sha256(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def answer_imports(requests_mock, refuse: dict[str, str] | None = None):
    """An import endpoint that answers every item (ids from 5000), refusing the values in `refuse`."""
    counter = iter(range(5000, 10**6))

    def answer(request, context):
        results = []
        for sent in request.json()["Indicators"]:
            reason = (refuse or {}).get(sent["indicatorValue"])
            results.append({"id": None if reason else str(next(counter)), "indicator": sent["indicatorValue"],
                            "isFailed": bool(reason), "failureReason": reason})
        return {"value": results}
    return requests_mock.post(f"{INDICATORS}/import", json=answer)


def outcomes(run) -> dict[str, dict]:
    return {o["Value"]: o for o in run.context["MicrosoftATP.Indicators(val.ID && val.ID == obj.ID)"]}


def test_batch_reports_created_updated_failed_and_repeated_items(xsoar, ti):
    existing = sha256("old")
    ti.get(INDICATORS, json={"value": [api_indicator(existing)]})
    imports = answer_imports(ti, refuse={sha256("refused"): "InvalidInput: refused by policy"})
    batch = [item(sha256("new")), item(existing.upper()), item("nothex", "FileSha1"),
             item("evil.example", "DomainName", action="BlockAndRemediate"), item(sha256("new")),
             item(sha256("refused")), {"indicatorvalue": "x"}, "not an object"]
    run = xsoar.run("microsoft-atp-indicator-batch-update", {"indicator_batch": json.dumps(batch)})
    sent = imports.request_history[0].json()["Indicators"]
    assert [s["indicatorValue"] for s in sent] == [sha256("new"), existing, sha256("refused")]
    assert len(imports.request_history) == 1
    assert query(api_calls(ti)[0]) == {"$top": "10000", "$skip": "0"}  # what exists, to tell creates from updates
    found = outcomes(run)
    assert found[sha256("new")]["Outcome"] == "Created" and found[sha256("new")]["ID"] == "5000"
    assert found[existing.upper()]["Outcome"] == "Updated"
    assert found["nothex"]["IsFailed"] and "item 3: indicatorValue must be a SHA-1" in found["nothex"]["FailureReason"]
    assert "item 4: action=BlockAndRemediate" in found["evil.example"]["FailureReason"]
    assert found[sha256("refused")]["FailureReason"] == "InvalidInput: refused by policy"
    assert "item 7: unknown field(s) indicatorvalue" in found[""]["FailureReason"]
    assert "item 8: each item must be a JSON object" in found["not an object"]["FailureReason"]
    repeats = [o for o in run.context["MicrosoftATP.Indicators(val.ID && val.ID == obj.ID)"]
               if "repeats item 1" in str(o["FailureReason"])]
    assert len(repeats) == 1 and repeats[0]["Value"] == sha256("new")
    assert "8 indicators: 1 created, 1 updated, 6 failed (1 import call)." in run.entry["HumanReadable"]


def test_batch_splits_into_calls_of_500_paced_to_30_a_minute(xsoar, ti):
    imports = answer_imports(ti)
    batch = [item(sha256(i)) for i in range(15_001)]
    run = xsoar.run("microsoft-atp-indicator-batch-update", {"indicator_batch": json.dumps(batch)})
    sizes = [len(r.json()["Indicators"]) for r in imports.request_history]
    assert sizes == [500] * 30 + [1]
    assert xsoar.sleeps == [60.0]  # the 31st call waits until the first leaves the one-minute window
    assert "15001 indicators: 15001 created, 0 updated, 0 failed (31 import calls)." in run.entry["HumanReadable"]
    assert run.entry["Contents"]["count"] == 15_001


def test_batch_honours_retry_after_and_a_failed_call_does_not_stop_the_others(xsoar, ti):
    answer = answer_imports(ti)._responses[0]._params["json"]
    ti.post(f"{INDICATORS}/import", [
        {"status_code": 429, "headers": {"Retry-After": "7"}, "json": {"error": {"code": "429", "message": "quota"}}},
        {"json": answer},
        {"status_code": 500, "json": {"error": {"code": "InternalServerError", "message": "boom"}}},
        {"json": answer}])
    batch = [item(sha256(i)) for i in range(1_200)]
    run = xsoar.run("microsoft-atp-indicator-batch-update", {"indicator_batch": json.dumps(batch)})
    assert 7.0 in xsoar.sleeps
    found = outcomes(run)
    assert sum(o["Outcome"] == "Created" for o in found.values()) == 700
    failed = [o for o in found.values() if o["IsFailed"]]
    assert len(failed) == 500 and all("HTTP 500" in o["FailureReason"] for o in failed)
    assert "1200 indicators: 700 created, 0 updated, 500 failed (3 import calls)." in run.entry["HumanReadable"]


def test_batch_from_a_file_entry(xsoar, ti, tmp_path):
    answer_imports(ti)
    path = tmp_path / "iocs.json"
    path.write_text(json.dumps([item(sha256(1)), item("198.51.100.9", "IpAddress", action="Allowed")]))
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: {"path": str(path), "name": "iocs.json"},
                              raising=False)
    run = xsoar.run("microsoft-atp-indicator-batch-update", {"indicator_batch": "12@34"})
    assert {o["Outcome"] for o in outcomes(run).values()} == {"Created"}


def test_local_runtime_resolves_a_file_argument_relative_to_where_the_cli_ran(tmp_path, monkeypatch):
    (tmp_path / "iocs.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    runtime = Runtime()
    assert runtime.get_file_path("iocs.json") == {"path": str(tmp_path / "iocs.json"), "name": "iocs.json"}
    with pytest.raises(ValueError, match="no file"):
        runtime.get_file_path("missing.json")


@pytest.mark.parametrize("value, message", [
    ("[not json", "indicator_batch is not valid JSON"),
    ('{"indicatorValue": "x"}', "must be a JSON list"),
    ("[]", "holds no indicators"),
    ("no-such-entry", "neither a JSON list nor a readable file entry"),
])
def test_batch_argument_errors(xsoar, ti, value, message):
    xsoar.monkeypatch.setattr(demistomock, "getFilePath", lambda entry_id: (_ for _ in ()).throw(
        ValueError("Entry not found")), raising=False)
    run = xsoar.run("microsoft-atp-indicator-batch-update", {"indicator_batch": value})
    assert message in run.error
    assert api_calls(ti) == []


def test_batch_where_everything_failed_is_an_error(xsoar, ti):
    run = xsoar.run("microsoft-atp-indicator-batch-update", {"indicator_batch": json.dumps([item("bad")])})
    assert "No indicator was imported" in run.error and "- bad: item 1" in run.error
    assert api_calls(ti) == []


def test_batch_items_refused_for_the_cap_are_explained(xsoar, ti):
    answer_imports(ti, refuse={sha256(2): "InvalidInput: The maximum number of active indicators (15000) ..."})
    ti.get(INDICATORS, [{"json": {"value": []}}, {"json": {"value": [api_indicator()] * 2}}])
    run = xsoar.run("microsoft-atp-indicator-batch-update",
                    {"indicator_batch": json.dumps([item(sha256(1)), item(sha256(2))])})
    assert "a tenant holds at most 15,000 active indicators; 2 are active" in run.entry["HumanReadable"]


# ---- the older Graph tiIndicators commands ------------------------------------------------------------

LEGACY_CONTEXT = CONTEXT
LEGACY_FILE = {"action": "block", "description": "d", "expiration_time": FUTURE, "threat_type": "Malware"}


@pytest.mark.parametrize("hash_type, value, kind", [
    ("sha1", SHA1, "FileSha1"), ("sha256", SHA256, "FileSha256"), ("md5", MD5, "FileMd5"),
    ("unknown", SHA1, "FileSha1"), ("", MD5, "FileMd5"), ("", SHA256, "FileSha256"),
])
def test_create_file_maps_the_hash_type(xsoar, ti, hash_type, value, kind):
    ti.post(INDICATORS, json=api_indicator(value, kind))
    xsoar.run("microsoft-atp-indicator-create-file", {**LEGACY_FILE, "file_hash_type": hash_type,
                                                       "file_hash_value": value})
    body = created_body(ti)
    assert body["indicatorType"] == kind and body["indicatorValue"] == value


@pytest.mark.parametrize("action, api_action, alert", [("allow", "Allowed", False), ("block", "Block", True),
                                                       ("alert", "Audit", True)])
@pytest.mark.parametrize("severity, api_severity", [("Informational", "Informational"), ("Low", "Low"),
                                                    ("MediumLow", "Medium"), ("MediumHigh", "Medium"),
                                                    ("High", "High"), ("", "Medium")])
def test_create_file_maps_action_and_severity(xsoar, ti, action, api_action, alert, severity, api_severity):
    ti.post(INDICATORS, json=api_indicator(SHA1, "FileSha1"))
    xsoar.run("microsoft-atp-indicator-create-file", {**LEGACY_FILE, "action": action, "severity": severity,
                                                       "file_hash_value": SHA1})
    body = created_body(ti)
    assert (body["action"], body["generateAlert"], body["severity"]) == (api_action, alert, api_severity)
    assert body["title"] == "Malware indicator" and body["expirationTime"] == FUTURE


def test_create_file_fills_the_older_context_and_the_file_details(xsoar, ti):
    ti.post(INDICATORS, json=api_indicator(SHA1, "FileSha1", action="Block"))
    run = xsoar.run("microsoft-atp-indicator-create-file", {
        **LEGACY_FILE, "file_hash_type": "sha1", "file_hash_value": SHA1, "file_name": "evil.exe",
        "file_size": "1024", "file_type": "PE", "file_path": "C:\\tmp", "tlp_level": "amber", "confidence": "80",
        "tags": "a,b", "file_packer": "upx"})
    indicator = run.context[LEGACY_CONTEXT][0]
    assert indicator == {
        "id": "995", "description": "test", "expirationDateTime": "2099-12-12T00:00:00Z", "externalId": "ext-1",
        "ingestedDateTime": "2024-05-01T10:54:23.2009016Z", "lastReportedDateTime": "2024-05-02T10:54:23.2009016Z",
        "severity": "High", "action": "block", "passiveOnly": False, "targetProduct": "Microsoft Defender ATP",
        "isActive": True, "fileHashType": "sha1", "fileHashValue": SHA1}
    assert run.context[FILE_KEY] == [{"SHA1": SHA1, "Name": "evil.exe", "Size": 1024, "Type": "PE",
                                      "Path": "C:\\tmp"}]
    assert "File indicator 995 created" in run.entry["HumanReadable"]
    assert "accepted, not stored): tlp_level, confidence, tags, file_packer, file_name" in run.entry["HumanReadable"]


@pytest.mark.parametrize("changes, named", [
    ({"file_hash_type": "ctph"}, "file_hash_type=ctph"),
    ({"file_hash_type": "authenticodeHash256"}, "file_hash_type"),
    ({"file_hash_value": "abc"}, "file_hash_value"),
    ({"file_hash_type": "md5"}, "file_hash_value"),
    ({"file_hash_value": ""}, "file_hash_value is required"),
    ({"file_mutex_name": "Global\\evil"}, "file_mutex_name cannot be used"),
    ({"action": "unknown"}, "action must be allow, block or alert"),
    ({"threat_type": "Spam"}, "threat_type"),
    ({"expiration_time": "1 day ago"}, "expiration_time"),
    ({"confidence": "200"}, "confidence"),
    ({"file_size": "big"}, "file_size"),
    ({"severity": "Critical"}, "severity"),
])
def test_create_file_refusals_name_the_argument(xsoar, ti, changes, named):
    run = xsoar.run("microsoft-atp-indicator-create-file", {**LEGACY_FILE, "file_hash_value": SHA1, **changes})
    assert named in run.error
    assert api_calls(ti) == []


@pytest.mark.parametrize("argument, value, kind, context_key, context", [
    ("domain_name", "evil.example", "DomainName", DOMAIN_KEY, {"domainName": "evil.example"}),
    ("url", "https://evil.example/x", "Url", URL_KEY, {"url": "https://evil.example/x"}),
    ("network_ipv4", "198.51.100.7", "IpAddress", IP_KEY, {"networkIPv4": "198.51.100.7"}),
    ("network_ipv6", "2001:db8::7", "IpAddress", IP_KEY, {"networkIPv6": "2001:db8::7"}),
    ("network_destination_ipv4", "203.0.113.9", "IpAddress", IP_KEY, {"networkIPv4": "203.0.113.9"}),
    ("network_destination_ipv6", "2001:db8::9", "IpAddress", IP_KEY, {"networkIPv6": "2001:db8::9"}),
])
def test_create_network_maps_each_value_argument(xsoar, ti, argument, value, kind, context_key, context):
    ti.post(INDICATORS, json=api_indicator(value, kind, action="Audit"))
    run = xsoar.run("microsoft-atp-indicator-create-network", {
        "action": "alert", "description": "d", "expiration_time": "30 days", "threat_type": "C2", argument: value})
    body = created_body(ti)
    assert (body["indicatorType"], body["indicatorValue"], body["action"]) == (kind, value, "Audit")
    legacy = run.context[LEGACY_CONTEXT][0]
    assert {k: legacy[k] for k in context} == context and legacy["action"] == "alert" and legacy["passiveOnly"]
    assert list(run.context[context_key][0].values()) == [value]


def test_create_network_submits_one_indicator_per_value(xsoar, ti):
    ti.post(INDICATORS, [{"json": api_indicator("evil.example", "DomainName", indicator_id="1")},
                         {"json": api_indicator("198.51.100.7", "IpAddress", indicator_id="2")}])
    run = xsoar.run("microsoft-atp-indicator-create-network", {
        "action": "block", "description": "d", "expiration_time": FUTURE, "threat_type": "C2",
        "domain_name": "evil.example", "network_ipv4": "198.51.100.7"})
    posts = [r.json() for r in api_calls(ti) if r.method == "POST"]
    assert [(p["indicatorType"], p["indicatorValue"]) for p in posts] == [
        ("DomainName", "evil.example"), ("IpAddress", "198.51.100.7")]
    assert [i["id"] for i in run.context[LEGACY_CONTEXT]] == ["1", "2"]


@pytest.mark.parametrize("argument", sorted(mde.LEGACY_REFUSED))
def test_create_network_refuses_what_the_indicators_api_cannot_express(xsoar, ti, argument):
    run = xsoar.run("microsoft-atp-indicator-create-network", {
        "action": "block", "description": "d", "expiration_time": FUTURE, "threat_type": "C2",
        "domain_name": "evil.example", argument: "10.0.0.0/8"})
    assert f"{argument} cannot be used any more" in run.error
    assert api_calls(ti) == []


def test_create_network_needs_a_value_and_checks_each(xsoar, ti):
    args = {"action": "block", "description": "d", "expiration_time": FUTURE, "threat_type": "C2"}
    assert "Give at least one of domain_name" in xsoar.run("microsoft-atp-indicator-create-network", args).error
    run = xsoar.run("microsoft-atp-indicator-create-network", {**args, "network_ipv4": "10.0.0.0/8"})
    assert "network_ipv4 must be a single IP address" in run.error
    assert api_calls(ti) == []


def test_legacy_list_and_get_fill_the_older_shape(xsoar, ti):
    ti.get(INDICATORS, json={"value": [
        api_indicator(MD5, "FileMd5", indicator_id="1", action="Allowed", expirationTime="2001-01-01T00:00:00Z"),
        api_indicator("https://evil.example/x", "Url", indicator_id="2", action="Alert", expirationTime=None)]})
    ti.get(f"{INDICATORS}/1", json=api_indicator(MD5, "FileMd5", indicator_id="1", action="Warn"))
    run = xsoar.run("microsoft-atp-indicator-list", {"limit": "20", "page_size": "10"})
    assert query(api_calls(ti)[0]) == {"$top": "10", "$skip": "0"}
    first, second = run.context[LEGACY_CONTEXT]
    assert (first["action"], first["isActive"], first["fileHashType"]) == ("allow", False, "md5")
    assert (second["action"], second["isActive"], second["url"], second["passiveOnly"]) == (
        "alert", True, "https://evil.example/x", True)
    assert run.context[FILE_KEY] == [{"MD5": MD5}] and run.context[URL_KEY] == [{"Data": "https://evil.example/x"}]
    assert DBOT_KEY not in run.context
    got = xsoar.run("microsoft-atp-indicator-get-by-id", {"indicator_id": "1"})
    assert got.context[LEGACY_CONTEXT][0]["action"] == "block"


def test_legacy_update_resubmits_the_stored_indicator_with_the_changes(xsoar, ti):
    stored = api_indicator("evil.example", "DomainName", action="AlertAndBlock", generateAlert=False)
    ti.get(f"{INDICATORS}/995", json=stored)
    ti.post(INDICATORS, json={**stored, "action": "Block", "severity": "Medium"})
    run = xsoar.run("microsoft-atp-indicator-update", {"indicator_id": "995", "severity": "MediumLow",
                                                        "expiration_time": FUTURE, "description": "new"})
    assert created_body(ti) == {
        "indicatorValue": "evil.example", "indicatorType": "DomainName", "action": "Block", "title": "test",
        "description": "new", "expirationTime": FUTURE, "severity": "Medium", "recommendedActions": "Reimage",
        "rbacGroupNames": ["Servers"], "generateAlert": True, "externalID": "ext-1"}
    assert run.context[LEGACY_CONTEXT][0]["severity"] == "Medium"
    assert run.context[DOMAIN_KEY] == [{"Name": "evil.example"}]


def test_legacy_update_and_delete_check_their_arguments(xsoar, ti):
    run = xsoar.run("microsoft-atp-indicator-update", {"indicator_id": "995", "expiration_time": "2 hours ago"})
    assert "expiration_time must be in the future" in run.error
    assert "indicator_id" in xsoar.run("microsoft-atp-indicator-delete", {"indicator_id": "../x"}).error
    assert api_calls(ti) == []
    ti.delete(f"{INDICATORS}/995", status_code=204)
    assert "Indicator 995 deleted" in xsoar.run("microsoft-atp-indicator-delete",
                                                 {"indicator_id": "995"}).entry["HumanReadable"]


def test_legacy_commands_are_marked_deprecated_naming_the_sc_command():
    doc = yaml.safe_load(open(mde.__file__.replace(".py", ".yml")).read())
    commands = {c["name"]: c for c in doc["script"]["commands"]}
    for name in ("list", "get-by-id", "create-file", "create-network", "update", "delete"):
        command = commands[f"microsoft-atp-indicator-{name}"]
        assert command["deprecated"] is True
        assert "microsoft-atp-sc-indicator-" in command["description"]


# ---- hostile values in every argument ---------------------------------------------------------------

HOSTILE = ["'", "''", "x' or 1 eq 1 or 'a' eq '", "..", "../..", "/", "%2e%2e", "?$top=1", "#", "a\nb",
           "\u202e", "\ud800", "' ; DROP", "$filter=id ne ''", "9" * 40, " ", "[]", "{}", "null", "-1", "1e309"]
VALID = {
    "microsoft-atp-sc-indicator-create": BASE, "microsoft-atp-sc-indicator-update": BASE,
    "microsoft-atp-sc-indicator-delete": {"indicator_id": "1,2"},
    "microsoft-atp-sc-indicator-list": {"indicator_value": "x", "indicator_title": "t", "indicator_type": "Url"},
    "microsoft-atp-sc-indicator-get-by-id": {"indicator_id": "1"},
    "microsoft-atp-indicator-batch-update": {"indicator_batch": json.dumps([item(SHA256)])},
    "microsoft-atp-indicator-list": {}, "microsoft-atp-indicator-get-by-id": {"indicator_id": "1"},
    "microsoft-atp-indicator-create-file": {**LEGACY_FILE, "file_hash_value": SHA1},
    "microsoft-atp-indicator-create-network": {**LEGACY_FILE, "domain_name": "evil.example"},
    "microsoft-atp-indicator-update": {"indicator_id": "1", "expiration_time": FUTURE},
    "microsoft-atp-indicator-delete": {"indicator_id": "1"},
}
YML_ARGS = {c["name"]: [a["name"] for a in c.get("arguments") or []]
            for c in yaml.safe_load(open(mde.__file__.replace(".py", ".yml")).read())["script"]["commands"]
            if c["name"] in VALID}
FILTER = re.compile(r"\w+ eq '(?:[^']|'')*'(?: and \w+ eq '(?:[^']|'')*')*")
PATHS = re.compile(r"/api/indicators(?:/\d+|/import|/BatchDelete)?")


def hostile_api(request, context):
    path = urlparse(request.url).path
    if request.method == "DELETE" or path.endswith("/BatchDelete"):
        context.status_code = 204
        return None
    if path.endswith("/import"):
        return {"value": [{"id": "7", "indicator": i["indicatorValue"], "isFailed": False, "failureReason": None}
                          for i in request.json()["Indicators"]]}
    if request.method == "POST":
        return api_indicator(request.json()["indicatorValue"], request.json()["indicatorType"])
    if re.search(r"/indicators/\d+$", path):
        return api_indicator()
    return {"value": []}


@pytest.fixture
def hostile(xsoar, entra, requests_mock):
    requests_mock.register_uri(rm.ANY, re.compile(re.escape(API) + ".*"), json=hostile_api)
    return xsoar, requests_mock


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_values_in_every_argument_never_escape_their_place(hostile, data):
    xsoar, requests_mock = hostile
    command = data.draw(st.sampled_from(sorted(VALID)))
    argument = data.draw(st.sampled_from(YML_ARGS[command]))
    value = data.draw(st.sampled_from(HOSTILE) | st.text(max_size=30))
    requests_mock.reset_mock()
    run = xsoar.run(command, {**VALID[command], argument: value})
    for error in run.errors:
        assert "Failed to execute" not in error, error  # an unexpected exception, not a refusal
    for request in api_calls(requests_mock):
        assert PATHS.fullmatch(urlparse(request.url).path), request.url
        odata = query(request).get("$filter")
        if odata and command.endswith("sc-indicator-list"):
            assert FILTER.fullmatch(odata), odata
    if run.errors and argument in ("indicator_id", "indicator_value", "file_hash_value", "domain_name"):
        assert any(name in run.errors[0] for name in YML_ARGS[command]), run.errors[0]


def test_indicator_ids_in_paths_are_one_segment(xsoar, ti):
    ti.get(f"{INDICATORS}/123", json=api_indicator(indicator_id="123"))
    xsoar.run("microsoft-atp-sc-indicator-get-by-id", {"indicator_id": " 123 "})
    assert [unquote(urlparse(r.url).path) for r in api_calls(ti)] == ["/api/indicators/123"]


def test_batch_delete_keeps_going_past_a_refused_chunk_and_a_chunk_of_missing_ids(xsoar, ti):
    batch = ti.post(f"{INDICATORS}/BatchDelete", [
        {"status_code": 403, "json": {"error": {"code": "Forbidden", "message": "device group"}}},
        {"status_code": 404, "json": {"error": {"code": "ResourceNotFound", "message": "missing"}}},
        {"status_code": 204}])
    ti.get(INDICATORS, json={"value": []})
    ids = [str(i) for i in range(1, 1002)]
    run = xsoar.run("microsoft-atp-sc-indicator-delete", {"indicator_id": ",".join(ids)})
    assert [len(r.json()["IndicatorIds"]) for r in batch.request_history] == [500, 500, 1]
    assert run.entry["Contents"]["deleted"] == ["1001"]
    reasons = {f["id"]: f["error"] for f in run.entry["Contents"]["failed"]}
    assert "HTTP 403" in reasons["1"] and "No such indicator" in reasons["501"]


def test_an_item_missing_from_microsofts_import_answer_is_reported(xsoar, ti):
    ti.post(f"{INDICATORS}/import", json={"value": [
        {"id": "1", "indicator": sha256(1), "isFailed": False, "failureReason": None}]})
    run = xsoar.run("microsoft-atp-indicator-batch-update",
                    {"indicator_batch": [item(sha256(1)), item(sha256(2))]})
    found = outcomes(run)
    assert found[sha256(1)]["Outcome"] == "Created"
    assert "did not mention this indicator" in found[sha256(2)]["FailureReason"]

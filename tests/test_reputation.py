"""Reputation and lookups: the `file` reputation command with DBotScore, file info, and the prevalence
statistics of files, IP addresses and domains, at the HTTP boundary through main()."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
from conftest import API, client_credentials_params, mock_entra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SHA1 = "50ef7a4d5b2c4e2f8b9c0d1e2f3a4b5c6d7e8f90"
SHA256 = "f" * 64
MD5 = "0123456789abcdef0123456789abcdef"
FILE_KEY = ("File(val.MD5 && val.MD5 == obj.MD5 || val.SHA1 && val.SHA1 == obj.SHA1 || val.SHA256 && "
            "val.SHA256 == obj.SHA256 || val.SHA512 && val.SHA512 == obj.SHA512 || val.CRC32 && val.CRC32 == obj.CRC32 "
            "|| val.CTPH && val.CTPH == obj.CTPH || val.SSDeep && val.SSDeep == obj.SSDeep)")
DBOT_KEY = ("DBotScore(val.Indicator && val.Indicator == obj.Indicator && val.Vendor == obj.Vendor && "
            "val.Type == obj.Type)")
MDE_FILE_KEY = "MicrosoftATP.File(val.Sha1 && val.Sha1 == obj.Sha1)"
VENDOR = "Microsoft Defender ATP"


@pytest.fixture(autouse=True)
def entra(requests_mock):
    mock_entra(requests_mock)


def file_record(sha1: str = SHA1, determination: str | None = "Malware", **overrides) -> dict:
    """A File as GET /api/files/{id} returns it."""
    return {"sha1": sha1, "sha256": SHA256, "md5": MD5, "globalPrevalence": 1340,
            "globalFirstObserved": "2023-01-02T03:04:05.1234567Z", "globalLastObserved": "2024-05-01T10:00:00Z",
            "size": 22016, "fileType": "PortableExecutable", "isPeFile": True, "filePublisher": "Contoso Ltd",
            "fileProductName": "Contoso Tool", "signer": "Contoso Ltd", "issuer": "Contoso CA",
            "signerHash": "a" * 40, "isValidCertificate": True, "determinationType": determination,
            "determinationValue": "Trojan:Win32/Wacatac.B!ml" if determination == "Malware" else "", **overrides}


def api_calls(requests_mock) -> list[str]:
    return [f"{r.method} {urlparse(r.url).path}" for r in requests_mock.request_history
            if "/api/" in r.url]


# ---- file reputation -------------------------------------------------------------------------------


@pytest.mark.parametrize("determination, score", [
    ("Clean", 1), ("clean", 1), ("Unknown", 0), (None, 0), ("", 0), ("Malware", 3), ("Pua", 3),
    ("Unwanted", 3), ("SomethingNew", 3),
])
def test_file_score_follows_microsofts_determination(xsoar, requests_mock, determination, score):
    requests_mock.get(f"{API}/files/{SHA1}", json=file_record(determination=determination))
    xsoar.params = client_credentials_params(Reliability="C - Fairly reliable")
    context = xsoar.run("file", {"file": SHA1}).context
    assert context[DBOT_KEY] == [{"Indicator": SHA1, "Type": "file", "Vendor": VENDOR, "Score": score,
                                  "Reliability": "C - Fairly reliable"}]
    std = context[FILE_KEY][0]
    assert (std["SHA1"], std["SHA256"], std["Size"], std["Type"]) == (SHA1, SHA256, 22016, "PortableExecutable")
    assert std["DigitalSignature"] == {"Publisher": "Contoso Ltd"}
    if score == 3:
        assert std["Malicious"] == {"Vendor": VENDOR, "Description": file_record(determination=determination)[
            "determinationValue"] or determination}
    else:
        assert "Malicious" not in std


def test_file_reputation_writes_the_microsoft_file_context(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", json=file_record())
    run = xsoar.run("file", {"file": SHA1})
    assert run.context[MDE_FILE_KEY] == [{
        "Sha1": SHA1, "Sha256": SHA256, "MD5": MD5, "GlobalPrevalence": 1340,
        "GlobalFirstObserved": "2023-01-02T03:04:05.1234567Z", "GlobalLastObserved": "2024-05-01T10:00:00Z",
        "Size": 22016, "FileType": "PortableExecutable", "IsPeFile": True, "FilePublisher": "Contoso Ltd",
        "FileProductName": "Contoso Tool", "Signer": "Contoso Ltd", "Issuer": "Contoso CA", "SignerHash": "a" * 40,
        "IsValidCertificate": True, "DeterminationType": "Malware",
        "DeterminationValue": "Trojan:Win32/Wacatac.B!ml"}]
    assert run.context[FILE_KEY][0]["MD5"] == MD5
    assert run.context[FILE_KEY][0]["Company"] == "Contoso Ltd"
    assert run.context[FILE_KEY][0]["ProductName"] == "Contoso Tool"
    assert "Malware" in run.entry["HumanReadable"]


def test_reliability_defaults_to_the_parameters_default(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", json=file_record())
    context = xsoar.run("file", {"file": SHA1}).context
    assert context[DBOT_KEY][0]["Reliability"] == "B - Usually reliable"


def test_several_hashes_unknown_and_md5_score_zero_with_a_note(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", json=file_record(determination="Clean"))
    requests_mock.get(f"{API}/files/{SHA256}", status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": "File was not found", "target": "x"}})
    run = xsoar.run("file", {"file": f"{SHA1}, {SHA256},{MD5}"})
    scores = {s["Indicator"]: s["Score"] for s in run.context[DBOT_KEY]}
    assert scores == {SHA1: 1, SHA256: 0, MD5: 0}
    files = run.context[FILE_KEY]
    assert {"SHA256": SHA256} in files and {"MD5": MD5} in files
    readable = run.entry["HumanReadable"]
    assert "not known to Microsoft Defender for Endpoint" in readable
    assert "cannot look files up by MD5" in readable
    assert api_calls(requests_mock) == [f"GET /api/files/{SHA1}", f"GET /api/files/{SHA256}"]


def test_a_failed_lookup_does_not_stop_the_other_hashes(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", json=file_record(determination="Clean"))
    requests_mock.get(f"{API}/files/{SHA256}", status_code=403,
                      json={"error": {"code": "Forbidden", "message": "Missing File.Read.All", "target": "x"}})
    run = xsoar.run("file", {"file": f"{SHA1},{SHA256}"})
    assert [s["Indicator"] for s in run.context[DBOT_KEY]] == [SHA1]
    assert SHA256 in run.entry["HumanReadable"] and "Missing File.Read.All" in run.entry["HumanReadable"]


def test_file_fails_when_every_lookup_failed(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", status_code=403,
                      json={"error": {"code": "Forbidden", "message": "Missing File.Read.All", "target": "x"}})
    assert "Missing File.Read.All" in xsoar.run("file", {"file": SHA1}).error


@pytest.mark.parametrize("command, arg", [("file", "file"), ("microsoft-atp-get-file-info", "hash")])
@pytest.mark.parametrize("value", ["", "xyz", SHA1 + "0", "../" + SHA1[3:], f"{SHA1},nothex"])
def test_bad_hashes_are_refused_before_any_call(xsoar, requests_mock, command, arg, value):
    error = xsoar.run(command, {arg: value}).error
    assert arg in error
    assert api_calls(requests_mock) == []


# ---- file info --------------------------------------------------------------------------------------


def test_get_file_info_without_scores(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", json=file_record())
    run = xsoar.run("microsoft-atp-get-file-info", {"hash": SHA1.upper()})
    assert run.context[MDE_FILE_KEY][0]["Signer"] == "Contoso Ltd"
    assert run.context[FILE_KEY][0]["SHA1"] == SHA1
    assert DBOT_KEY not in run.context
    assert api_calls(requests_mock) == [f"GET /api/files/{SHA1}"]


def test_get_file_info_unknown_hash_is_a_note(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}", status_code=404,
                      json={"error": {"code": "ResourceNotFound", "message": "File was not found", "target": "x"}})
    run = xsoar.run("microsoft-atp-get-file-info", {"hash": SHA1})
    assert run.context == {}
    assert "not known to Microsoft Defender for Endpoint" in run.entry["HumanReadable"]


# ---- statistics ---------------------------------------------------------------------------------------


FILE_STATS = {"sha1": SHA1, "organizationPrevalence": 3, "orgFirstSeen": "2024-04-01T00:00:00Z",
              "orgLastSeen": "2024-04-30T00:00:00Z", "globallyPrevalence": 1340,
              "globalFirstObserved": "2023-01-02T03:04:05Z", "globalLastObserved": "2024-05-01T10:00:00Z",
              "topFileNames": ["tool.exe", "t.exe"]}


def test_get_file_statistics(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA256}/stats", json={**FILE_STATS})
    run = xsoar.run("microsoft-atp-get-file-statistics", {"file_hash": SHA256, "lookBackHours": "48"})
    assert requests_mock.last_request.qs == {"lookbackhours": ["48"]}
    assert run.context["MicrosoftATP.FileStatistics(val.Sha1 && val.Sha1 == obj.Sha1)"] == [{
        "Sha1": SHA1, "Statistics": {
            "OrgPrevalence": 3, "OrganizationPrevalence": 3, "OrgFirstSeen": "2024-04-01T00:00:00Z",
            "OrgLastSeen": "2024-04-30T00:00:00Z", "GlobalPrevalence": 1340, "GloballyPrevalence": 1340,
            "GlobalFirstObserved": "2023-01-02T03:04:05Z", "GlobalLastObserved": "2024-05-01T10:00:00Z",
            "TopFileNames": ["tool.exe", "t.exe"]}}]
    assert run.context[FILE_KEY] == {
        "SHA1": SHA1, "OrganizationPrevalence": 3, "GlobalPrevalence": 1340,
        "OrganizationFirstSeen": "2024-04-01T00:00:00Z", "OrganizationLastSeen": "2024-04-30T00:00:00Z",
        "FirstSeenBySource": "2023-01-02T03:04:05Z", "LastSeenBySource": "2024-05-01T10:00:00Z"}


def test_statistics_without_look_back_send_no_parameter(xsoar, requests_mock):
    requests_mock.get(f"{API}/files/{SHA1}/stats", json={**FILE_STATS})
    xsoar.run("microsoft-atp-get-file-statistics", {"file_hash": SHA1})
    assert requests_mock.last_request.qs == {}


def test_get_ip_statistics(xsoar, requests_mock):
    requests_mock.get(f"{API}/ips/10.1.2.3/stats", json={
        "ipAddress": "10.1.2.3", "organizationPrevalence": 2, "orgFirstSeen": "2024-04-01T00:00:00Z",
        "orgLastSeen": "2024-04-02T00:00:00Z"})
    run = xsoar.run("microsoft-atp-get-ip-statistics", {"ip": "10.1.2.3", "lookBackHours": "720"})
    assert requests_mock.last_request.qs == {"lookbackhours": ["720"]}
    key = "MicrosoftATP.IPStatistics.Statistics(val.IPAddress && val.IPAddress == obj.IPAddress)"
    assert run.context[key] == [{"IPAddress": "10.1.2.3", "OrgPrevalence": 2, "OrgFirstSeen": "2024-04-01T00:00:00Z",
                                 "OrgLastSeen": "2024-04-02T00:00:00Z"}]


def test_get_domain_statistics_of_an_unknown_domain(xsoar, requests_mock):
    requests_mock.get(f"{API}/domains/example.com/stats", json={
        "host": "example.com", "organizationPrevalence": 0, "orgFirstSeen": None, "orgLastSeen": None})
    run = xsoar.run("microsoft-atp-get-domain-statistics", {"domain": "example.com"})
    key = "MicrosoftATP.DomainStatistics.Statistics(val.Host && val.Host == obj.Host)"
    assert run.context[key] == [{"Host": "example.com", "OrgPrevalence": 0, "OrgFirstSeen": None,
                                 "OrgLastSeen": None}]


@pytest.mark.parametrize("command, args, name", [
    ("microsoft-atp-get-file-statistics", {"file_hash": SHA1, "lookBackHours": "721"}, "lookBackHours"),
    ("microsoft-atp-get-file-statistics", {"file_hash": SHA1, "lookBackHours": "0"}, "lookBackHours"),
    ("microsoft-atp-get-ip-statistics", {"ip": "10.1.2.3", "lookBackHours": "two"}, "lookBackHours"),
    ("microsoft-atp-get-file-statistics", {"file_hash": MD5}, "file_hash"),
    ("microsoft-atp-get-file-statistics", {"file_hash": "nothex"}, "file_hash"),
    ("microsoft-atp-get-ip-statistics", {"ip": "999.1.1.1"}, "ip"),
    ("microsoft-atp-get-ip-statistics", {"ip": "fe80::1%eth0/x"}, "ip"),
    ("microsoft-atp-get-domain-statistics", {"domain": "../machines"}, "domain"),
    ("microsoft-atp-get-domain-statistics", {"domain": ""}, "domain"),
])
def test_statistics_arguments_are_validated_before_any_call(xsoar, requests_mock, command, args, name):
    assert name in xsoar.run(command, args).error
    assert api_calls(requests_mock) == []


# ---- hostile values in every path argument ------------------------------------------------------------

PATH_ARGUMENTS = [
    ("file", "file", "files/{}"),
    ("microsoft-atp-get-file-info", "hash", "files/{}"),
    ("microsoft-atp-get-file-statistics", "file_hash", "files/{}/stats"),
    ("microsoft-atp-get-ip-statistics", "ip", "ips/{}/stats"),
    ("microsoft-atp-get-domain-statistics", "domain", "domains/{}/stats"),
]


@pytest.mark.parametrize("command, arg, template", PATH_ARGUMENTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(max_size=80), st.sampled_from(
    [".", "..", "a/b", "x?y=1", "x#y", "%2e%2e", "1.2.3.4/..", SHA1 + "/..", "example.com/../x", "\x00",
     "fe80::1%25x"])))
def test_hostile_path_values_never_leave_their_segment(xsoar, requests_mock, command, arg, template, value):
    requests_mock.reset_mock()
    requests_mock.get(re.compile(rf"^{re.escape(API)}/"), json={})
    run = xsoar.run(command, {arg: value})
    calls = [urlparse(r.url).path for r in requests_mock.request_history if "/api/" in r.url]
    if run.errors and not calls:
        return  # refused before any request
    prefix, suffix = template.split("{}")
    for path in calls:
        rest = path.removeprefix("/api/")
        assert rest.startswith(prefix) and rest.endswith(suffix), path
        segment = rest[len(prefix):len(rest) - len(suffix)]
        assert segment and "/" not in segment and segment not in (".", ".."), path

"""The emulator's live response sessions, script library and file/IP/domain statistics, over HTTPS.

Time moves only through the emulator's clock (POST /admin/clock), never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import gzip

import pytest
import requests
from test_emulator import Api

from mde_emulator.server import EmulatorServer, Options

DELAY = 100  # action delay (emulator seconds): InProgress at 50, commands finish in turn until 100


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(Options(seed=5, machines=80, alerts=300, action_delay=DELAY, token_lifetime=10**7)) as srv:
        srv.emulator.clock.freeze(True)  # emulator time moves only when a test advances it
        yield srv


@pytest.fixture(scope="module")
def info(server):
    return server.info


@pytest.fixture(scope="module")
def api(info):
    return Api(info)


@pytest.fixture
def advance(info):
    def move(seconds):
        r = requests.post(f"{info['admin_url']}/clock", json={"advance": seconds}, verify=info["ca_bundle"],
                          timeout=10)
        assert r.status_code == 200, r.text
    return move


@pytest.fixture(autouse=True)
def settle(server, advance):
    """Each test starts with no live sessions and a fresh quota window."""
    yield
    server.emulator.faults.update({"action_outcome": "Succeeded", "action_delay": DELAY})
    advance(DELAY * 2 + 61)


@pytest.fixture(scope="module")
def machines(server):
    """Windows machines, each used by one test at most (one session per device)."""
    return iter([m for m in server.emulator.store.machines if m["osPlatform"].startswith("Windows")])


def _evidence_file(store, machine_id):
    for alert in store.alerts:
        if alert["machineId"] == machine_id:
            for ev in store.evidence[alert["id"]]:
                if ev["sha1"]:
                    return ev
    return None


def _session(api, machine_id, *commands, comment="investigate"):
    body = {"Commands": [{"type": t, "params": [{"key": k, "value": v} for k, v in p.items()]}
                         for t, p in commands], "Comment": comment}
    return api.post(f"/api/machines/{machine_id}/runliveresponse", json=body)


def _download(api, action_id, index):
    link = api.get(f"/api/machineactions/{action_id}/GetLiveResponseResultDownloadLink(index={index})")
    assert link.status_code == 200, link.text
    url = link.json()["value"]
    return url, requests.get(url, verify=api.info["ca_bundle"], timeout=10)


def test_run_script_lifecycle_and_transcript(api, machines, advance):
    machine = next(machines)
    r = _session(api, machine["id"], ("RunScript", {"ScriptName": "hello.ps1", "Args": "-Mode quick"}))
    assert r.status_code == 201, r.text
    action = r.json()
    assert action["type"] == "LiveResponse" and action["status"] == "Pending"
    assert action["commands"] == [{"index": 0, "startTime": None, "endTime": None, "commandStatus": "Created",
                                   "errors": [], "command": {"type": "RunScript", "params": [
                                       {"key": "ScriptName", "value": "hello.ps1"},
                                       {"key": "Args", "value": "-Mode quick"}]}}]
    advance(DELAY / 2)
    assert api.get(f"/api/machineactions/{action['id']}").json()["status"] == "InProgress"
    advance(DELAY / 2)
    done = api.get(f"/api/machineactions/{action['id']}").json()
    assert done["status"] == "Succeeded"
    assert done["commands"][0]["commandStatus"] == "Completed" and done["commands"][0]["endTime"]
    _, result = _download(api, action["id"], 0)
    host = machine["computerDnsName"].split(".")[0].upper()
    assert result.json() == {"script_name": "hello.ps1", "exit_code": 0, "script_errors": "",
                             "script_output": f"Hello from {host}\nargs: -Mode quick\n"}


def test_result_link_expires_after_30_minutes_and_a_new_one_works(api, machines, advance):
    machine = next(machines)
    action = _session(api, machine["id"], ("RunScript", {"ScriptName": "failing.ps1"})).json()
    advance(DELAY)
    url, first = _download(api, action["id"], 0)
    assert first.json()["exit_code"] == 3 and first.json()["script_errors"] == "Something went wrong\n"
    advance(1799)
    assert requests.get(url, verify=api.info["ca_bundle"], timeout=10).status_code == 200
    advance(2)
    assert requests.get(url, verify=api.info["ca_bundle"], timeout=10).status_code == 403
    assert requests.get(url.replace("sig=", "sig=0"), verify=api.info["ca_bundle"], timeout=10).status_code == 403
    _, again = _download(api, action["id"], 0)
    assert again.status_code == 200


def test_get_file_of_alert_evidence_is_delivered_gzipped(api, server, machines, advance):
    store = server.emulator.store
    machine, evidence = next((m, e) for m in machines if (e := _evidence_file(store, m["id"])))
    path = f"{evidence['filePath']}\\{evidence['fileName']}"
    action = _session(api, machine["id"], ("GetFile", {"Path": path.upper()})).json()
    advance(DELAY)
    assert api.get(f"/api/machineactions/{action['id']}").json()["status"] == "Succeeded"
    _, result = _download(api, action["id"], 0)
    assert f'filename="{evidence["fileName"].upper()}.gz"' in result.headers["Content-Disposition"]
    assert gzip.decompress(result.content).startswith(b"MZ") and evidence["sha1"].encode() in gzip.decompress(
        result.content)


def test_put_file_then_get_it_back(api, machines, advance):
    machine = next(machines)
    target = "C:\\ProgramData\\Microsoft\\Windows Defender Advanced Threat Protection\\Downloads\\hello.ps1"
    action = _session(api, machine["id"], ("PutFile", {"FileName": "hello.ps1"}), ("GetFile", {"Path": target}))
    advance(DELAY)
    done = api.get(f"/api/machineactions/{action.json()['id']}").json()
    assert [c["commandStatus"] for c in done["commands"]] == ["Completed", "Completed"]
    no_result = api.get(f"/api/machineactions/{done['id']}/GetLiveResponseResultDownloadLink(index=0)")
    assert no_result.status_code == 404 and "PutFile" in no_result.json()["error"]["message"]
    _, result = _download(api, done["id"], 1)
    assert b"Hello from" in gzip.decompress(result.content)


def test_a_failed_command_skips_the_rest(api, machines, advance):
    machine = next(machines)
    action = _session(api, machine["id"], ("GetFile", {"Path": "C:\\nowhere\\x.txt"}),
                      ("RunScript", {"ScriptName": "hello.ps1"})).json()
    advance(DELAY / 2 + DELAY / 4)
    done = api.get(f"/api/machineactions/{action['id']}").json()
    assert done["status"] == "Failed" and done["errorHResult"] != 0
    assert done["commands"][0]["commandStatus"] == "Failed"
    assert done["commands"][0]["errors"] == ["File not found on the device: C:\\nowhere\\x.txt"]
    assert done["commands"][1]["commandStatus"] == "Created" and done["commands"][1]["startTime"] is None
    advance(DELAY)
    assert api.get(f"/api/machineactions/{action['id']}").json()["commands"][1]["commandStatus"] == "Created"


def test_script_missing_from_the_library_fails_on_the_device(api, machines, advance):
    action = _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "absent.ps1"}))
    assert action.status_code == 201, action.text
    action = action.json()
    advance(DELAY)
    done = api.get(f"/api/machineactions/{action['id']}").json()
    assert done["status"] == "Failed"
    assert done["commands"][0]["errors"] == ["The file 'absent.ps1' is not in the live response library."]


@pytest.mark.parametrize("outcome", ["Failed", "TimeOut"])
def test_configured_outcome_applies_to_sessions(api, server, machines, advance, outcome):
    server.emulator.faults.update({"action_outcome": outcome})
    action = _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"})).json()
    advance(DELAY)
    done = api.get(f"/api/machineactions/{action['id']}").json()
    assert done["status"] == outcome
    assert done["commands"][0]["commandStatus"] == ("Failed" if outcome == "Failed" else "Created")


def test_second_session_on_a_device_is_refused_and_cancel_ends_the_first(api, machines, advance):
    machine = next(machines)
    first = _session(api, machine["id"], ("RunScript", {"ScriptName": "hello.ps1"})).json()
    second = _session(api, machine["id"], ("GetFile", {"Path": "C:\\Windows\\Temp\\setup.log"}))
    assert second.status_code == 400 and second.json()["error"]["code"] == "ActiveRequestAlreadyExists"
    listed = api.get("/api/machineactions", params={
        "$filter": f"machineId eq '{machine['id']}' and type eq 'LiveResponse' and status eq 'Pending'"}).json()
    assert [a["id"] for a in listed["value"]] == [first["id"]]
    cancelled = api.post(f"/api/machineactions/{first['id']}/cancel", json={"Comment": "wrong host"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "Cancelled"
    advance(DELAY)
    assert api.get(f"/api/machineactions/{first['id']}").json()["status"] == "Cancelled"
    assert _session(api, machine["id"], ("RunScript", {"ScriptName": "hello.ps1"})).status_code == 201


def test_ten_sessions_a_minute_then_429_with_retry_after(api, machines, advance):
    for _ in range(10):
        assert _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"})).status_code == 201
    refused = _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"}))
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    advance(int(refused.headers["Retry-After"]))
    assert _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"})).status_code == 201


def test_25_concurrent_sessions_then_429(api, server, machines, advance):
    server.emulator.faults.update({"action_delay": 100000})
    for i in range(25):
        if i and i % 10 == 0:
            advance(60)
        assert _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"})).status_code == 201
    advance(60)
    refused = _session(api, next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"}))
    assert refused.status_code == 429 and "25 concurrent" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 60
    advance(100000)


@pytest.mark.parametrize("body, code", [
    ({"Commands": [{"type": "RunScript", "params": [{"key": "scriptName", "value": "x"}]}], "Comment": "c"},
     "InvalidRequestBody"),
    ({"Commands": [{"type": "Execute", "params": []}], "Comment": "c"}, "InvalidRequestBody"),
    ({"Commands": [], "Comment": "c"}, "InvalidRequestBody"),
    ({"Commands": [{"type": "GetFile", "params": [{"key": "Path", "value": "C:\\x"}]}]}, "MissingRequiredParameter"),
    ({"Commands": [{"type": "GetFile", "params": []}], "Comment": "c"}, "MissingRequiredParameter"),
])
def test_bodies_microsoft_refuses(api, machines, body, code):
    r = api.post(f"/api/machines/{next(machines)['id']}/runliveresponse", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_live_response_needs_its_permission(info, machines):
    r = _session(Api(info, "limited"), next(machines)["id"], ("RunScript", {"ScriptName": "hello.ps1"}))
    assert r.status_code == 403


# -- library -------------------------------------------------------------------------------------------------
def test_library_upload_list_override_delete(api):
    names = [f["fileName"] for f in api.get("/api/libraryfiles").json()["value"]]
    assert "hello.ps1" in names
    files = {"File": ("triage.ps1", b'Write-Output "ok"\n')}
    data = {"Description": "triage", "ParametersDescription": "-Full", "OverrideIfExists": "false"}
    created = api.post("/api/libraryfiles", files=files, data=data)
    assert created.status_code == 200, created.text
    record = created.json()
    assert record["fileName"] == "triage.ps1" and record["description"] == "triage"
    assert record["hasParameters"] is True and record["parametersDescription"] == "-Full"
    assert len(record["sha256"]) == 64
    again = api.post("/api/libraryfiles", files=files, data=data)
    assert again.status_code == 400 and "OverrideIfExists" in again.json()["error"]["message"]
    replaced = api.post("/api/libraryfiles", files={"File": ("triage.ps1", b"exit 1\n")},
                        data={"OverrideIfExists": "true"})
    assert replaced.status_code == 200 and replaced.json()["sha256"] != record["sha256"]
    assert replaced.json()["creationTime"] == record["creationTime"]
    listed = {f["fileName"]: f for f in api.get("/api/libraryfiles").json()["value"]}
    assert listed["triage.ps1"]["sha256"] == replaced.json()["sha256"]
    assert api.request("DELETE", "/api/libraryfiles/triage.ps1").status_code == 204
    gone = api.request("DELETE", "/api/libraryfiles/triage.ps1")
    assert gone.status_code == 404


def test_library_refuses_large_files_missing_file_and_plain_bodies(api, info):
    big = api.post("/api/libraryfiles", files={"File": ("big.bin", b"0" * (20 * 1024 * 1024 + 1))})
    assert big.status_code == 400 and "20 MB" in big.json()["error"]["message"]
    missing = api.post("/api/libraryfiles", files={"Description": (None, "no file")})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MissingRequiredParameter"
    plain = api.post("/api/libraryfiles", json={"File": "x"})
    assert plain.status_code == 400
    assert Api(info, "limited").get("/api/libraryfiles").status_code == 403


# -- statistics ------------------------------------------------------------------------------------------------
def _sightings(store, match, hours):
    start = store.clock.utcnow() - dt.timedelta(hours=hours) if hasattr(store, "clock") else None
    machines, times = set(), []
    for alert in store.alerts:
        for ev in store.evidence[alert["id"]]:
            when = dt.datetime.strptime(ev["evidenceCreationTime"][:19], "%Y-%m-%dT%H:%M:%S").replace(
                tzinfo=dt.timezone.utc)
            if match(ev) and (start is None or when >= start):
                machines.add(alert["machineId"])
                times.append(ev["evidenceCreationTime"])
    return machines, sorted(times)


def test_file_stats_agree_with_alert_evidence(api, server):
    store = server.emulator.store
    sha1 = next(ev["sha1"] for a in store.alerts for ev in store.evidence[a["id"]] if ev["sha1"])
    record = store.files[sha1]
    stats = api.get(f"/api/files/{record['sha256']}/stats", params={"lookBackHours": 720}).json()
    machines, times = _sightings(store, lambda e: e["sha1"] == sha1, 720)
    assert stats["sha1"] == sha1 and stats["organizationPrevalence"] == len(machines) > 0
    assert (stats["orgFirstSeen"], stats["orgLastSeen"]) == (times[0], times[-1])
    assert stats["globallyPrevalence"] == record["globalPrevalence"]
    assert stats["topFileNames"] == [record["fileName"]]
    short = api.get(f"/api/files/{sha1}/stats", params={"lookBackHours": 1}).json()
    assert short["organizationPrevalence"] <= stats["organizationPrevalence"]


@pytest.mark.parametrize("path, status, code", [
    ("/api/files/{sha1}/stats?lookBackHours=721", 400, "InvalidInput"),
    ("/api/files/{sha1}/stats?lookBackHours=abc", 400, "InvalidInput"),
    ("/api/files/{md5}/stats", 400, "InvalidHashValue"),
    ("/api/files/" + "0" * 40 + "/stats", 404, "ResourceNotFound"),
    ("/api/ips/999.1.1.1/stats", 400, "InvalidIpAddress"),
    ("/api/domains/not_a_domain/stats", 400, "InvalidDomainName"),
])
def test_stats_errors(api, server, path, status, code):
    record = next(iter(server.emulator.store.files.values()))
    r = api.get(path.format(sha1=record["sha1"], md5=record["md5"]))
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_ip_and_domain_stats(api, server):
    store = server.emulator.store
    ip = next(ev["ipAddress"] for a in store.alerts for ev in store.evidence[a["id"]] if ev["ipAddress"])
    stats = api.get(f"/api/ips/{ip}/stats").json()
    machines, times = _sightings(store, lambda e: e["ipAddress"] == ip, 720)
    assert stats["ipAddress"] == ip and stats["organizationPrevalence"] == len(machines)
    assert stats["orgLastSeen"] == times[-1]
    domain = next(ev["url"] for a in store.alerts for ev in store.evidence[a["id"]] if ev["url"])
    d = api.get(f"/api/domains/{domain}/stats", params={"lookBackHours": "48"}).json()
    assert d["host"] == domain and d["organizationPrevalence"] == len(
        _sightings(store, lambda e: e["url"] == domain, 48)[0])
    unknown = api.get("/api/domains/never-seen.example/stats").json()
    assert unknown == {**unknown, "organizationPrevalence": 0, "orgFirstSeen": None, "orgLastSeen": None}


def test_signed_installers_are_clean_in_file_info(api, server):
    record = next(f for f in server.emulator.store.files.values() if f["fileName"] == "setup.msi")
    info = api.get(f"/api/files/{record['sha1']}").json()
    assert info["determinationType"] == "Clean" and info["signer"] == "Contoso Ltd"
    assert info["isValidCertificate"] is True and "md5" not in info

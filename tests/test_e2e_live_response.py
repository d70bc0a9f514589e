"""End to end: live response, its library and file/IP/domain reputation through the `mde` CLI against the emulator."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from e2e import action_delay, actions_requested, run_advancing_clock

pytestmark = pytest.mark.e2e
INSTANCE = "client-credentials"


def context(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def run(lab, command: str, *args: str, options: tuple[str, ...] = ()):
    return lab.mde.run(lab.instances[INSTANCE], command, *args, options=options)


def run_session(lab, command: str, *args: str, options: tuple[str, ...] = ()):
    """A session command that polls until the session is final: its time passes on the emulator's clock once the
    session exists, so nothing waits in real time."""
    return run_advancing_clock(lab, lab.instances[INSTANCE], command, *args, options=options,
                               when=actions_requested(lab), seconds=action_delay(lab))


@pytest.fixture(scope="module")
def windows_machines(lab):
    """Windows machines for live response, one per test (a device holds one session at a time)."""
    found = context(run(lab, "microsoft-atp-get-machines", "os_platform=Windows11", "page_size=10",
                        options=("--json",)))
    return iter(as_list(found["MicrosoftATP.Machine"]))


def saved_files(result) -> list[Path]:
    return [Path(line.split("saved file: ", 1)[1].rsplit(" (", 1)[0])
            for line in (result.stdout + result.stderr).splitlines() if "saved file: " in line]


def test_upload_a_script_run_it_and_read_its_output(lab, windows_machines, tmp_path):
    script = tmp_path / "e2e_triage.ps1"
    script.write_text('Write-Output "triage of $args"\nWrite-Error "one warning"\nexit 4\n')
    uploaded = context(run(lab, "microsoft-atp-upload-library-file", f"entry_id={script}",
                           "description=e2e triage", "parameters_description=the case id", options=("--json",)))
    record = as_list(uploaded["MicrosoftATP.LibraryFile"])[0]
    assert record["FileName"] == "e2e_triage.ps1" and record["HasParameters"] is True
    listed = context(run(lab, "microsoft-atp-list-library-files", options=("--json",)))
    assert "e2e_triage.ps1" in [f["FileName"] for f in as_list(listed["MicrosoftATP.LibraryFile"])]
    refused = run(lab, "microsoft-atp-upload-library-file", f"entry_id={script}")
    assert refused.returncode == 1 and "override_if_exists" in refused.stderr

    machine = next(windows_machines)
    ran = context(run_session(lab, "microsoft-atp-live-response-run-script", f"machine_id={machine['ID']}",
                              "comment=e2e triage", "scriptName=e2e_triage.ps1", "arguments=IR-7",
                              options=("--json",)))
    result = as_list(ran["MicrosoftATP.LiveResponseAction"])[-1]
    assert result["status"] == "Succeeded"
    assert (result["script_name"], result["exit_code"]) == ("e2e_triage.ps1", 4)
    assert result["script_output"] == "triage of IR-7\n" and result["script_errors"] == "one warning\n"

    assert run(lab, "microsoft-atp-delete-library-file", "file_name=e2e_triage.ps1").returncode == 0
    listed = context(run(lab, "microsoft-atp-list-library-files", options=("--json",)))
    assert "e2e_triage.ps1" not in [f["FileName"] for f in as_list(listed["MicrosoftATP.LibraryFile"])]


def test_get_a_file_and_find_it_on_disk(lab, windows_machines):
    machine = next(windows_machines)
    result = run_session(lab, "microsoft-atp-live-response-get-file", f"machine_id={machine['ID']}",
                         "comment=e2e collect", "path=C:\\Windows\\System32\\drivers\\etc\\hosts")
    assert result.returncode == 0, result.stderr
    saved = saved_files(result)
    assert len(saved) == 1 and saved[0].name.startswith("hosts") and saved[0].suffix == ".gz"
    assert b"localhost" in gzip.decompress(saved[0].read_bytes())
    assert "Succeeded" in result.stdout


def test_a_failed_get_file_reports_microsofts_error(lab, windows_machines):
    result = run_session(lab, "microsoft-atp-live-response-get-file", f"machine_id={next(windows_machines)['ID']}",
                         "comment=e2e missing", "path=C:\\nowhere\\missing.txt")
    assert result.returncode == 1
    assert "File not found on the device: C:\\nowhere\\missing.txt" in result.stderr
    assert not saved_files(result)


def test_a_second_session_is_refused_with_the_pending_one_then_cancelled(lab, windows_machines):
    machine = next(windows_machines)
    with lab.emulator.frozen_clock():  # the first session stays pending until cancelled
        started = run(lab, "microsoft-atp-live-response-run-script", f"machine_id={machine['ID']}",
                      "comment=e2e slow", "scriptName=hello.ps1", "polling=false", options=("--json",))
        session = as_list(context(started)["MicrosoftATP.LiveResponseAction"])[-1]
        assert session["status"] == "Pending"
        second = run(lab, "microsoft-atp-live-response-get-file", f"machine_id={machine['ID']}",
                     "comment=e2e second", "path=C:\\Windows\\Temp\\setup.log")
        assert second.returncode == 1
        assert session["id"] in second.stderr and "RunScript hello.ps1" in second.stderr
        assert "microsoft-atp-live-response-cancel-action" in second.stderr
        cancelled = run(lab, "microsoft-atp-live-response-cancel-action", f"machine_action_id={session['id']}",
                        "comment=e2e no longer needed")
        assert cancelled.returncode == 0, cancelled.stderr
        assert "Cancelled" in cancelled.stdout
    details = context(run(lab, "microsoft-atp-list-machine-actions-details", f"id={session['id']}",
                          options=("--json",)))
    assert as_list(details["MicrosoftATP.MachineAction"])[0]["Status"] == "Cancelled"


# -- reputation ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evidence(lab):
    """A file hash, an IP address and a domain seen in alerts, found through the CLI."""
    alerts = as_list(context(run(lab, "microsoft-atp-list-alerts", "limit=40", options=("--json",)))[
        "MicrosoftATP.Alert"])
    found: dict[str, str] = {}
    lookups = (("Files", "microsoft-atp-get-alert-related-files", "MicrosoftATP.AlertFile", "Sha1"),
               ("IPs", "microsoft-atp-get-alert-related-ips", "MicrosoftATP.AlertIP", "IpAddress"),
               ("Domains", "microsoft-atp-get-alert-related-domains", "MicrosoftATP.AlertDomain", "Domain"))
    for alert in alerts:
        for kind, command, path, field in lookups:
            if kind in found:
                continue
            ctx = context(run(lab, command, f"id={alert['ID']}", options=("--json",)))
            items = [item for record in as_list(ctx.get(path) or []) for item in as_list(record.get(kind) or [])]
            if items:
                found[kind] = items[0][field]
        if len(found) == 3:
            return found
    pytest.fail(f"no alert evidence of every kind among {len(alerts)} alerts: {found}")


def test_file_reputation_and_info(lab, evidence):
    sha1 = evidence["Files"]
    ctx = context(run(lab, "file", f"file={sha1},{'0' * 40}", options=("--json",)))
    scores = {s["Indicator"]: s for s in as_list(ctx["DBotScore"])}
    assert scores["0" * 40]["Score"] == 0
    assert scores[sha1]["Vendor"] == "Microsoft Defender ATP" and scores[sha1]["Score"] in (0, 1, 3)
    assert scores[sha1]["Reliability"]
    info = context(run(lab, "microsoft-atp-get-file-info", f"hash={sha1}", options=("--json",)))
    assert as_list(info["MicrosoftATP.File"])[0]["Sha1"] == sha1
    assert as_list(info["File"])[0]["SHA1"] == sha1


def test_prevalence_statistics(lab, evidence):
    sha1 = evidence["Files"]
    stats = context(run(lab, "microsoft-atp-get-file-statistics", f"file_hash={sha1}", "lookBackHours=720",
                        options=("--json",)))
    file_stats = as_list(stats["MicrosoftATP.FileStatistics"])[0]
    assert file_stats["Sha1"] == sha1 and file_stats["Statistics"]["OrgPrevalence"] >= 1
    assert file_stats["Statistics"]["OrganizationPrevalence"] == file_stats["Statistics"]["OrgPrevalence"]
    ip = evidence["IPs"]
    ip_stats = context(run(lab, "microsoft-atp-get-ip-statistics", f"ip={ip}", options=("--json",)))
    assert as_list(ip_stats["MicrosoftATP.IPStatistics.Statistics"])[0]["OrgPrevalence"] >= 1
    domain = evidence["Domains"]
    domain_stats = context(run(lab, "microsoft-atp-get-domain-statistics", f"domain={domain}", "lookBackHours=720",
                               options=("--json",)))
    assert as_list(domain_stats["MicrosoftATP.DomainStatistics.Statistics"])[0]["Host"] == domain
    too_far = run(lab, "microsoft-atp-get-ip-statistics", f"ip={ip}", "lookBackHours=721")
    assert too_far.returncode == 1 and "lookBackHours" in too_far.stderr

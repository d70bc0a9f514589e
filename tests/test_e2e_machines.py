"""End to end: machines and response actions through the `mde` CLI against the emulator."""

from __future__ import annotations

import json
import zipfile

import pytest
from e2e import action_delay, actions_requested, api_requests, run_advancing_clock

pytestmark = pytest.mark.e2e


def run_action(lab, command: str, *args: str, options: tuple[str, ...] = ()):
    """An action command that polls until its action is final: the action's time passes on the emulator's clock
    once the action exists."""
    return run_advancing_clock(lab, lab.instances["client-credentials"], command, *args, options=options,
                               when=actions_requested(lab), seconds=action_delay(lab))


def context(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def machines_in(ctx: dict) -> list[dict]:
    value = ctx.get("MicrosoftATP.Machine", [])
    return value if isinstance(value, list) else [value]


def actions_in(ctx: dict) -> list[dict]:
    value = ctx.get("MicrosoftATP.MachineAction", [])
    return value if isinstance(value, list) else [value]


def endpoint(lab, machine_id: str) -> dict:
    ctx = context(lab.mde.run(lab.instances["client-credentials"], "endpoint", f"id={machine_id}", options=("--json",)))
    found = ctx["Endpoint"]
    return found[0] if isinstance(found, list) else found


@pytest.fixture(scope="module")
def windows_machine(lab):
    """A Windows machine found the way an analyst would: by hostname prefix."""
    ctx = context(lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-get-machines",
                              "page_size=50", "os_platform=Windows10", options=("--json",)))
    first = machines_in(ctx)[0]
    prefix = first["ComputerDNSName"][:12]
    found = machines_in(context(lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-get-machines",
                                            f"hostname={prefix}", options=("--json",))))
    assert first["ID"] in [m["ID"] for m in found]
    assert all(m["ComputerDNSName"].startswith(prefix) for m in found)
    return first


def test_isolate_polls_until_succeeded_then_release(lab, windows_machine):
    machine_id = windows_machine["ID"]
    isolated = run_action(lab, "microsoft-atp-isolate-machine", f"machine_id={machine_id}",
                          "comment=e2e containment", "isolation_type=Full", options=("--json",))
    final = actions_in(context(isolated))
    assert [a["Status"] for a in final if a["MachineID"] == machine_id][-1] == "Succeeded"
    assert lab.emulator.admin("GET", f"machines/{machine_id}")["state"]["isolation"] == "Isolated"
    assert endpoint(lab, machine_id)["IsIsolated"] is True

    released = run_action(lab, "microsoft-atp-unisolate-machine", f"machine_id={machine_id}", "comment=e2e release")
    assert released.returncode == 0, released.stderr
    assert "Succeeded" in released.stdout
    assert lab.emulator.admin("GET", f"machines/{machine_id}")["state"]["isolation"] == "NotIsolated"
    assert endpoint(lab, machine_id)["IsIsolated"] is False


def test_an_action_already_pending_is_reused_not_duplicated(lab, windows_machine):
    instance = lab.instances["client-credentials"]
    args = (f"machine_id={windows_machine['ID']}", "comment=e2e scan", "scan_type=Quick", "polling=false")
    with lab.emulator.frozen_clock():  # the first scan stays pending however long the second run takes to start
        first = actions_in(context(lab.mde.run(instance, "microsoft-atp-run-antivirus-scan", *args,
                                               options=("--json",))))
        again = actions_in(context(lab.mde.run(instance, "microsoft-atp-run-antivirus-scan", *args,
                                               options=("--json",))))
        lab.emulator.advance_clock(action_delay(lab))  # no action left pending for the next tests
    assert again[0]["ID"] == first[0]["ID"]
    assert again[0].get("PreExisting") is True


def test_quarantine_a_file_with_polling(lab, windows_machine):
    sha1 = "a" * 40
    result = run_action(lab, "microsoft-atp-stop-and-quarantine-file", f"machine_id={windows_machine['ID']}",
                        f"file_hash={sha1}", "comment=e2e quarantine", "polling=true", options=("--json",))
    actions = actions_in(context(result))
    assert actions[-1]["Type"] == "StopAndQuarantineFile" and actions[-1]["Status"] == "Succeeded"
    assert actions[-1]["RelatedFileInfo"]["FileIdentifier"] == sha1


def test_investigation_package_arrives_as_a_file(lab, windows_machine):
    result = run_action(lab, "microsoft-atp-request-and-download-investigation-package",
                        f"machine_id={windows_machine['ID']}", "comment=e2e package")
    assert result.returncode == 0, result.stderr
    saved = [line.split("saved file: ", 1)[1] for line in (result.stdout + result.stderr).splitlines()
             if "saved file: " in line]
    assert saved, result.stdout
    path = saved[0].rsplit(" (", 1)[0]
    assert zipfile.is_zipfile(path)


def test_inventory_walk_lists_every_machine_in_two_pages(lab):
    lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-test", check=True)
    lab.emulator.reset_counters()
    ctx = context(lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-get-machines", "all_results=true",
                              options=("--json",)))
    machines = machines_in(ctx)
    assert len(machines) == 12_000 and len({m["ID"] for m in machines}) == 12_000
    assert api_requests(lab.emulator, "GET /api/machines") == 2


def test_bad_machine_id_is_rejected_before_any_call(lab):
    lab.emulator.reset_counters()
    result = lab.mde.run(lab.instances["client-credentials"], "microsoft-atp-isolate-machine", "machine_id=nope",
                         "comment=x", "isolation_type=Full")
    assert result.returncode == 1 and "machine_id" in result.stderr
    assert not any(k.startswith("POST") for k in lab.emulator.counters()["requests"] if
                   lab.emulator.counters()["requests"][k])

"""`make demo`: a short tour of the integration through the `mde` CLI against the emulator.

Starts the emulator, writes an instance file per authentication flow, runs the commands a SOAR
engineer runs first, then stops the emulator. Exits non-zero if any step fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests
import yaml

from lab.emulator import Emulator
from lab.instances import cli_env, set_auth_code, write_instances
from lab.runner import REPO, Mde

DEMO_DIR = REPO / ".demo"
MAX_LINES = 25


class Tour:
    def __init__(self, mde: Mde, instances: dict[str, Path]):
        self.mde, self.instances = mde, instances

    def step(self, title: str) -> None:
        print(f"\n\033[1m== {title}\033[0m")

    def run(self, instance: str | None, command: str, *args: str, options: tuple[str, ...] = (),
            expect_failure: bool = False) -> str:
        path = self.instances[instance] if instance else None
        result = self.mde.run(path, command, *args, options=options)
        shown = result.shown.replace(str(REPO) + "/", "")
        print(f"$ {shown}")
        output = (result.stdout + result.stderr).rstrip()
        lines = output.splitlines()
        print(textwrap.indent("\n".join(lines[:MAX_LINES]), "  "))
        if len(lines) > MAX_LINES:
            print(f"  ... ({len(lines) - MAX_LINES} more lines)")
        failed = result.returncode != 0
        if failed != expect_failure:
            raise SystemExit(f"demo step failed: {shown} exited {result.returncode}")
        return result.stdout


def sign_in(login_url: str, ca_bundle: str) -> str:
    """What the user does in a browser: open the login URL and copy the code from the redirect."""
    response = requests.get(login_url, allow_redirects=False, verify=ca_bundle, timeout=30)
    location = response.headers["Location"]
    return parse_qs(urlparse(location).query)["code"][0]


def tour(emulator: Emulator, workdir: Path) -> None:
    ready = emulator.ready
    instances = write_instances(ready, workdir / "instances")
    mde = Mde(state_dir=workdir / "state", env={**cli_env(ready), "COLUMNS": "150"}, output_dir=workdir / "files")
    t = Tour(mde, instances)
    print(f"Emulator of Entra ID, the XSOAR app service, IMDS and the Defender API at {ready['base_url']}")
    print(f"Instance files: {instances['client-credentials'].parent.relative_to(REPO)}/")

    t.step("Test each authentication flow")
    for name in ("client-credentials", "certificate", "xsoar-app", "managed-identity"):
        t.run(name, "test-module")
    t.step("Authorization Code: the Test button explains the steps, then sign in once")
    t.run("authorization-code", "test-module", expect_failure=True)
    raw = t.run("authorization-code", "microsoft-atp-generate-login-url", options=("--raw",))
    code = sign_in(json.loads(raw)["login_url"], ready["ca_bundle"])
    print(f"  (signed in as {ready['clients']['authcode']['username']}; pasting the code into the instance)")
    set_auth_code(instances["authorization-code"], code)
    t.run("authorization-code", "microsoft-atp-test")

    t.step("Which permissions does an app have, and what does a missing one block?")
    t.run("limited", "microsoft-atp-list-auth-permissions")

    t.step("List machines")
    t.run("client-credentials", "microsoft-atp-get-machines", "page_size=5")
    for highlight in HIGHLIGHTS:
        highlight(t, ready)


def first_machine(t: Tour, os_platform: str) -> dict:
    found = json.loads(t.run("client-credentials", "microsoft-atp-get-machines", f"os_platform={os_platform}",
                             "page_size=1", options=("--json",)))
    machine = found["MicrosoftATP.Machine"]
    return machine[0] if isinstance(machine, list) else machine


def respond_to_a_host(t: Tour, ready: dict) -> None:
    t.step("Find a host by name, isolate it and wait until Microsoft reports Succeeded, then release it")
    machine = first_machine(t, "Windows11")
    hostname = machine["ComputerDNSName"].split(".")[0]
    t.run("client-credentials", "microsoft-atp-get-machines", f"hostname={hostname}")
    polling = ("--poll-interval-override", "1")
    t.run("client-credentials", "microsoft-atp-isolate-machine", f"machine_id={machine['ID']}",
          "comment=Contain while IR-1042 is investigated", "isolation_type=Full", options=polling)
    t.run("client-credentials", "microsoft-atp-unisolate-machine", f"machine_id={machine['ID']}",
          "comment=IR-1042 closed", options=polling)


def retrieve_a_file_from_a_host(t: Tour, ready: dict) -> None:
    t.step("Retrieve a file from a host with live response (saved gzip-compressed, as Microsoft delivers it)")
    machine = first_machine(t, "Windows10")
    t.run("client-credentials", "microsoft-atp-live-response-get-file", f"machine_id={machine['ID']}",
          "comment=IR-1042: collect the hosts file", "path=C:\\Windows\\System32\\drivers\\etc\\hosts",
          options=("--poll-interval-override", "1"))


def alerts_and_fetch(t: Tour, ready: dict) -> None:
    t.step("Alerts, and fetching them as incidents (nothing fetched twice, nothing lost)")
    t.run("client-credentials", "microsoft-atp-list-alerts", "severity=High", "limit=5")
    fetcher = t.instances["client-credentials"].with_name("fetcher.yml")
    document = yaml.safe_load(t.instances["client-credentials"].read_text())
    document["name"] = "fetcher"
    document["params"].update({"isFetch": True, "max_fetch": "20", "first_fetch": "30 days"})
    fetcher.write_text(yaml.safe_dump(document, sort_keys=False))
    t.instances["fetcher"] = fetcher
    t.run("fetcher", "fetch")
    t.run("fetcher", "fetch")


def hunt(t: Tour, ready: dict) -> None:
    t.step("Advanced hunting on Microsoft Graph: a raw KQL query, then a template built from arguments")
    found = json.loads(t.run("client-credentials", "microsoft-atp-advanced-hunting",
                             'query=DeviceProcessEvents | where FileName =~ "procdump64.exe" '
                             "| summarize Dumps = count() by DeviceName | top 3 by Dumps", "name=lsass_dumps",
                             options=("--json",)))
    device = found["MicrosoftATP.Hunt.Result"]["lsass_dumps"][0]["DeviceName"]
    t.run("client-credentials", "microsoft-atp-advanced-hunting-lateral-movement-evidence",
          "query_purpose=credential_dumping", f"device_name={device.split('.')[0]}", "show_query=true")
    t.step("An app without ThreatHunting.Read.All: the hunt falls back to the retiring Defender API and says so")
    t.run("defender-hunting", "microsoft-atp-advanced-hunting-tampering", f"device_name={device.split('.')[0]}",
          "limit=3")


def block_a_hash(t: Tour, ready: dict) -> None:
    t.step("Block a file hash everywhere (submit again: Microsoft updates the same indicator), then list it")
    sha256 = hashlib.sha256(b"IR-1042 dropper").hexdigest()
    block = ("microsoft-atp-sc-indicator-create", f"indicator_value={sha256}", "indicator_type=FileSha256",
             "indicator_title=IR-1042 dropper", "indicator_description=Dropper seen in IR-1042", "severity=High")
    t.run("client-credentials", *block, "action=Block")
    t.run("client-credentials", *block, "action=BlockAndRemediate")
    t.run("client-credentials", "microsoft-atp-sc-indicator-list", f"indicator_value={sha256}")


def what_to_patch_first(t: Tour, ready: dict) -> None:
    t.step("Which machines have this CVE, and what should we patch first?")
    t.run("client-credentials", "microsoft-atp-list-vulnerabilities-by-software", "id=microsoft-_-windows_11")
    quiet = t.mde.run(t.instances["client-credentials"], "microsoft-atp-list-vulnerabilities-by-software",
                      "id=microsoft-_-windows_11", options=("--json",))
    cves = json.loads(quiet.stdout)["MicrosoftATP.SoftwareCVE"]
    cves = cves if isinstance(cves, list) else [cves]
    worst = max(cves, key=lambda cve: (cve["cvssV3"], cve["exposedMachines"]))
    t.run("client-credentials", "microsoft-atp-list-machines-by-vulnerability", f"cve_id={worst['id']}")
    t.run("client-credentials", "microsoft-atp-list-security-recommendations", "severity_score=8",
          "status=Active", "limit=5")
    t.run("client-credentials", "microsoft-atp-get-exposure-score", "by_machine_group=true")
    t.run("client-credentials", "microsoft-atp-list-remediation-tasks", "status=Active", "limit=5")


HIGHLIGHTS = [respond_to_a_host, retrieve_a_file_from_a_host, alerts_and_fetch, block_a_hash,
              what_to_patch_first, hunt]


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    with Emulator(machines=2000, alerts=200, workdir=DEMO_DIR / "emulator",
                  extra_args=["--action-delay", "4"]) as emulator:
        tour(emulator, DEMO_DIR)
    print("\nDemo finished: every step above ran through the mde CLI against the emulator.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end: many `mde` processes of one instance at once, as playbooks run in XSOAR.

Single-flight token requests (cold, and after every token expired on the emulator's clock) in every
flow, and one fetch at a time per instance."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from e2e import token_requests

from lab.demo import sign_in
from lab.instances import set_auth_code

pytestmark = pytest.mark.e2e

RUNS = 8
FLOWS = ("client-credentials", "certificate", "xsoar-app", "managed-identity", "authorization-code")
TOKEN_LIFETIME = 3600  # the emulator's default


def instance_copy(lab, flow: str, name: str, **params) -> Path:
    """The flow's instance file under another name: its own state directory, nothing shared with other tests."""
    document = yaml.safe_load(lab.instances[flow].read_text())
    document["name"] = name
    document["params"].update(params)
    path = lab.instances[flow].parent / f"{name}.yml"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def all_token_requests(lab) -> int:
    return sum(token_requests(lab.emulator).values())


def run_together_and_count_tokens(lab, instance: Path) -> int:
    before = all_token_requests(lab)
    runs = lab.mde.run_together(RUNS, instance, "microsoft-atp-test")
    failures = [run.stderr for run in runs if run.returncode != 0 or "Success" not in run.stdout]
    assert failures == []
    return all_token_requests(lab) - before


def test_eight_runs_at_once_make_one_token_request_cold_and_after_expiry(lab):
    instances = {flow: instance_copy(lab, flow, f"{flow}-together") for flow in FLOWS}
    login = lab.mde.run(instances["authorization-code"], "microsoft-atp-generate-login-url", options=("--raw",),
                        check=True)
    set_auth_code(instances["authorization-code"],
                  sign_in(json.loads(login.stdout)["login_url"], lab.emulator.ready["ca_bundle"]))

    cold = {flow: run_together_and_count_tokens(lab, instance) for flow, instance in instances.items()}
    assert cold == dict.fromkeys(FLOWS, 1)

    # Every token issued so far expires on the emulator's clock; the processes, on the real clock, still
    # hold them: the API answers 401 and exactly one process per instance renews the token (for the
    # authorization code, by redeeming the single-use refresh token).
    lab.emulator.advance_clock(TOKEN_LIFETIME + 1)
    after_expiry = {flow: run_together_and_count_tokens(lab, instance) for flow, instance in instances.items()}
    assert after_expiry == dict.fromkeys(FLOWS, 1)


def test_eight_fetches_at_once_turn_each_alert_into_one_incident(lab):
    instance = instance_copy(lab, "client-credentials", "fetch-together", isFetch=True, max_fetch="10",
                             first_fetch_timestamp="2 minutes", fetch_status="New,InProgress,Resolved",
                             fetch_severity="Informational,Low,Medium,High", fetch_lookback_minutes="5")
    lab.mde.run(instance, "fetch", options=("--json",), check=True)  # starts the cursor
    generated = lab.emulator.admin("POST", "alerts/generate", {"count": 40})["ids"]

    fetched: list[str] = []
    for _ in range(3):  # 8 x 10 per round: enough for the 40 and anything other tests added meanwhile
        runs = lab.mde.run_together(RUNS, instance, "fetch", options=("--json",))
        assert [run.stderr for run in runs if run.returncode != 0] == []
        assert all("last run saved" in run.stderr for run in runs)
        fetched += [json.loads(i["rawJSON"])["id"] for run in runs for i in json.loads(run.stdout or "[]")]

    assert [alert_id for alert_id, n in Counter(fetched).items() if n > 1] == []
    assert set(generated) <= set(fetched), f"missed: {sorted(set(generated) - set(fetched))}"

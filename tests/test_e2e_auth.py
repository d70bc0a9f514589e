"""End to end: the `mde` CLI as a subprocess against the emulator, for every authentication flow."""

from __future__ import annotations

import json

import pytest
from e2e import token_requests

from lab.demo import sign_in
from lab.instances import set_auth_code

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("flow", ["client-credentials", "certificate", "xsoar-app", "managed-identity"])
def test_test_module_passes_for_each_flow(lab, flow):
    result = lab.mde.run(lab.instances[flow], "test-module")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_authorization_code_flow_signs_in_once_and_then_refreshes(lab):
    instance = lab.instances["authorization-code"]
    refused = lab.mde.run(instance, "test-module")
    assert refused.returncode == 1 and "!microsoft-atp-generate-login-url" in refused.stderr

    login = lab.mde.run(instance, "microsoft-atp-generate-login-url", options=("--raw",), check=True)
    set_auth_code(instance, sign_in(json.loads(login.stdout)["login_url"], lab.emulator.ready["ca_bundle"]))
    before = token_requests(lab.emulator)
    for _ in range(3):
        assert "Success" in lab.mde.run(instance, "microsoft-atp-test", check=True).stdout
        lab.emulator.advance_clock(3601)  # the access token expires: the next run refreshes it
    after = token_requests(lab.emulator)
    assert after.get("authorization_code", 0) - before.get("authorization_code", 0) == 1
    assert after.get("refresh_token", 0) - before.get("refresh_token", 0) == 2  # rotated twice

    lab.mde.run(instance, "microsoft-atp-auth-reset", check=True)
    reused = lab.mde.run(instance, "microsoft-atp-test")
    assert reused.returncode == 1
    assert "AADSTS54005" in reused.stderr and "!microsoft-atp-generate-login-url" in reused.stderr


def test_tokens_are_reused_across_separate_runs(lab):
    instance = lab.instances["client-credentials"]
    lab.mde.run(instance, "microsoft-atp-auth-reset", check=True)
    lab.emulator.reset_counters()
    before = token_requests(lab.emulator).get("client_credentials", 0)
    for _ in range(5):
        lab.mde.run(instance, "microsoft-atp-test", check=True)
    assert token_requests(lab.emulator).get("client_credentials", 0) - before == 1
    assert lab.emulator.admin("GET", "faults")["error_burst"] is None  # both 503s were served


def test_permissions_listing_names_what_a_limited_app_cannot_do(lab):
    result = lab.mde.run(lab.instances["limited"], "microsoft-atp-list-auth-permissions", check=True)
    assert "Machine.Read.All" in result.stdout
    assert "Machine.Isolate" in result.stdout and "microsoft-atp-test" not in result.stdout.split("Missing")[-1]


def test_a_wrong_secret_is_explained_without_revealing_it(lab):
    env = {**lab.mde.env, "MDE_CLIENT_SECRET": "wrong-secret-value-123456"}
    wrong = type(lab.mde)(state_dir=lab.mde.state_dir / "wrong", env=env)
    result = wrong.run(lab.instances["client-credentials"], "test-module")
    assert result.returncode == 1
    assert "AADSTS7000215" in result.stderr and "client secret in Key is wrong" in result.stderr
    assert "wrong-secret-value-123456" not in result.stdout + result.stderr


def test_rate_limited_listing_waits_and_succeeds(lab):
    instance = lab.instances["client-credentials"]
    lab.mde.run(instance, "microsoft-atp-test", check=True)  # a token in hand
    lab.emulator.reset_counters()
    # A 429 with Retry-After: 1 for the next API call, whatever the machine's speed (a quota window in
    # real seconds made this test depend on how fast the CLI starts).
    lab.emulator.set_faults(error_burst={"status": 429, "count": 1})
    lab.mde.run(instance, "microsoft-atp-test", check=True)
    assert lab.emulator.counters()["responses"] == {"429": 1, "200": 1}


def test_entra_outage_is_retried_by_the_cli(lab):
    instance = lab.instances["certificate"]
    lab.mde.run(instance, "microsoft-atp-auth-reset", check=True)
    lab.emulator.reset_counters()
    before = token_requests(lab.emulator).get("client_credentials", 0)
    lab.emulator.set_faults(error_burst={"status": 503, "count": 2, "families": ["token"]})
    result = lab.mde.run(instance, "microsoft-atp-test")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert token_requests(lab.emulator).get("client_credentials", 0) - before == 1
    assert lab.emulator.admin("GET", "faults")["error_burst"] is None  # both 503s were served

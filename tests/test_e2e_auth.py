"""End to end: the `mde` CLI as a subprocess against the emulator, for every authentication flow."""

from __future__ import annotations

import json

import pytest
from e2e import api_requests, run_advancing_clock, token_requests

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
    lab.emulator.set_faults(token_lifetime=1)
    try:
        with lab.emulator.frozen_clock():  # a token expires only when the test says, never during a run
            for _ in range(3):
                assert "Success" in lab.mde.run(instance, "microsoft-atp-test", check=True).stdout
                lab.emulator.advance_clock(1)  # every run needs a new access token: reused, it is refused
    finally:
        lab.emulator.set_faults(token_lifetime=3600)
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
    before = token_requests(lab.emulator).get("client_credentials", 0)
    for _ in range(5):
        lab.mde.run(instance, "microsoft-atp-test", check=True)
    assert token_requests(lab.emulator).get("client_credentials", 0) - before == 1


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
    window = 1
    lab.emulator.set_faults(rate_limit_per_minute=2, rate_limit_window_seconds=window)
    try:
        with lab.emulator.frozen_clock():  # the quota is used up until the test moves the clock
            for _ in range(2):
                lab.mde.run(instance, "microsoft-atp-test", check=True)
            third = run_advancing_clock(lab, instance, "microsoft-atp-test", when=lambda: refused(lab) > 0,
                                        seconds=window)
    finally:
        lab.emulator.set_faults(rate_limit_per_minute=None)
    assert third.returncode == 0, third.stderr
    assert "Success" in third.stdout
    assert refused(lab) >= 1  # refused until the window had passed, then served
    assert api_requests(lab.emulator, "GET /api/alerts") == 3 + refused(lab)


def refused(lab) -> int:
    return lab.emulator.counters()["responses"].get("429", 0)

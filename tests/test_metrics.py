"""API-execution metrics: every HTTP call counted by outcome in the Transport, one type-19 entry from main()."""

from __future__ import annotations

import pytest
import requests
from conftest import API

MID = "4899036531e374137f63289c3267bad772c13fef"
MACHINE = {"id": MID, "computerDnsName": "desktop-1.contoso.com", "healthStatus": "Active"}


@pytest.fixture(autouse=True)
def entra(entra):
    return entra


def metrics_of(run) -> dict[str, int]:
    assert len(run.metrics) == 1, run.metrics
    entry = run.metrics[0]
    assert entry["Type"] == 19 and entry["ContentsFormat"] == "text"
    assert entry["Contents"] == "Metrics reported successfully."
    return {item["Type"]: item["APICallsCount"] for item in entry["APIExecutionMetrics"]}


def machine_details(xsoar):
    return xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": MID})


def test_a_successful_call_is_counted_once(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", json=MACHINE)

    run = machine_details(xsoar)

    assert run.entry["EntryContext"]  # the command's own result is untouched
    assert metrics_of(run) == {"Successful": 1}


def test_a_429_that_was_waited_out_counts_as_quota_error_then_success(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", [
        {"status_code": 429, "headers": {"Retry-After": "5"}, "json": {"error": {"code": "TooManyRequests"}}},
        {"json": MACHINE}])

    run = machine_details(xsoar)

    assert xsoar.sleeps == [5.0]
    assert metrics_of(run) == {"Successful": 1, "QuotaError": 1}


def test_a_429_beyond_the_wait_budget_is_a_quota_error(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", status_code=429, headers={"Retry-After": "3600"},
                      json={"error": {"code": "TooManyRequests", "message": "quota"}})

    run = xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": MID})

    assert metrics_of(run) == {"QuotaError": 1}


def test_401_counts_as_auth_error_for_the_refused_call_and_the_retry_after_refresh(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", status_code=401, json={"error": {"code": "Unauthorized"}})

    run = machine_details(xsoar)

    assert metrics_of(run) == {"AuthError": 2}  # one refresh, one retry, then the command reports the failure


def test_403_is_an_auth_error(xsoar, requests_mock):
    requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=403, json={"error": {"code": "Forbidden"}})

    run = xsoar.run("microsoft-atp-isolate-machine", args={
        "machine_id": MID, "comment": "IR-1", "isolation_type": "Full", "polling": "false"})

    assert metrics_of(run) == {"AuthError": 1}


def test_5xx_retried_reads_count_service_errors_and_one_retry_error_when_given_up(xsoar, requests_mock):
    route = requests_mock.get(f"{API}/machines/{MID}", status_code=503, json={"error": {"code": "ServiceUnavailable"}})

    run = machine_details(xsoar)

    assert route.call_count == 4
    assert metrics_of(run) == {"ServiceError": 3, "RetryError": 1}


def test_a_5xx_then_success(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", [{"status_code": 500, "json": {}}, {"json": MACHINE}])

    assert metrics_of(machine_details(xsoar)) == {"Successful": 1, "ServiceError": 1}


def test_a_write_answered_with_5xx_is_not_repeated_and_is_a_service_error(xsoar, requests_mock):
    route = requests_mock.post(f"{API}/machines/{MID}/isolate", status_code=500, json={"error": {"code": "Internal"}})
    requests_mock.get(f"{API}/machineactions", json={"value": []})  # the lookup after an ambiguous failure

    run = xsoar.run("microsoft-atp-isolate-machine", args={
        "machine_id": MID, "comment": "IR-1", "isolation_type": "Full", "polling": "false"})

    assert route.call_count == 1
    counts = metrics_of(run)
    assert counts["ServiceError"] == 1 and "RetryError" not in counts


@pytest.mark.parametrize("exc, outcome", [
    (requests.exceptions.ConnectionError("refused"), "ConnectionError"),
    (requests.exceptions.ReadTimeout("slow"), "TimeoutError"),
    (requests.exceptions.ProxyError("proxy said no"), "ProxyError"),
])
def test_connection_errors_are_counted_by_kind_and_the_last_as_retry_error(xsoar, requests_mock, exc, outcome):
    requests_mock.get(f"{API}/machines/{MID}", exc=exc)

    run = machine_details(xsoar)

    assert run.error  # reported as an error entry
    assert metrics_of(run) == {outcome: 3, "RetryError": 1}


def test_an_ssl_error_is_not_retried_and_counts_as_ssl_error(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", exc=requests.exceptions.SSLError("bad certificate"))

    assert metrics_of(machine_details(xsoar)) == {"SSLError": 1}


def test_other_client_errors_are_general_errors(xsoar, requests_mock):
    requests_mock.get(f"{API}/machines/{MID}", status_code=404, json={"error": {"code": "ResourceNotFound"}})

    assert metrics_of(machine_details(xsoar)) == {"GeneralError": 1}


@pytest.mark.parametrize("version", ["6.5.0", "6.7.9", "", None])
def test_servers_older_than_6_8_get_no_metrics(xsoar, requests_mock, version):
    requests_mock.get(f"{API}/machines/{MID}", json=MACHINE)
    xsoar.server_version = version

    run = machine_details(xsoar)

    assert run.metrics == [] and run.entry["EntryContext"]


@pytest.mark.parametrize("version", ["6.8.0", "6.10.0", "8.4.0-123"])
def test_servers_from_6_8_get_metrics(xsoar, requests_mock, version):
    requests_mock.get(f"{API}/machines/{MID}", json=MACHINE)
    xsoar.server_version = version

    assert metrics_of(machine_details(xsoar)) == {"Successful": 1}


def test_no_metrics_without_an_api_call(xsoar, requests_mock):
    run = xsoar.run("microsoft-atp-get-machine-details", args={"machine_id": "not/an/id"})

    assert run.error and run.metrics == []


@pytest.mark.parametrize("command", ["test-module", "fetch-incidents"])
def test_test_module_and_fetch_report_no_metrics(xsoar, requests_mock, command):
    alerts = requests_mock.get(f"{API}/alerts", json={"value": []})
    xsoar.params = {**xsoar.params, "isFetch": True}

    run = xsoar.run(command)

    assert alerts.called and run.metrics == []  # the API was called, yet the platform gets only its own results

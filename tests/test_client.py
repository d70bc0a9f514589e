"""The HTTP client: retries, rate limits, error messages, paging and the OData builder."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from conftest import API, FakeClock, make_jwt

import MicrosoftDefenderForEndpoint as mde


class StaticProvider(mde.TokenProvider):
    """Hands out numbered tokens; counts how often a fresh one was asked for."""

    flow = "static"

    def __init__(self) -> None:
        self.issued = 0

    def get_token(self, force_refresh: bool = False) -> str:
        if force_refresh or not self.issued:
            self.issued += 1
        return f"token-{self.issued}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps(clock) -> list[float]:
    return clock.sleeps


@pytest.fixture
def client(clock) -> mde.Client:
    return mde.Client("https://api.securitycenter.microsoft.com", mde.BearerAuth(StaticProvider()), clock=clock)


def query(request) -> dict[str, list[str]]:
    return parse_qs(urlparse(request.url).query)


# ---- rate limits and retries ---------------------------------------------------------------------


def test_429_waits_for_retry_after_then_succeeds(client, requests_mock, sleeps):
    route = requests_mock.get(f"{API}/machines/abc", [
        {"status_code": 429, "headers": {"Retry-After": "7"}, "json": {"error": {"code": "TooManyRequests"}}},
        {"json": {"id": "abc"}}])
    assert client.request("GET", "machines/abc") == {"id": "abc"}
    assert sleeps == [7.0]
    assert route.call_count == 2


def test_429_without_header_reads_the_seconds_from_the_message(client, requests_mock, sleeps):
    message = "API calls quota exceeded! Maximum allowed 100 per 00:01:00. You can send requests again in 12 seconds."
    requests_mock.post(f"{API}/machines/abc/isolate", [
        {"status_code": 429, "json": {"error": {"code": "429", "message": message}}},
        {"status_code": 201, "json": {"id": "action"}}])
    assert client.request("POST", "machines/abc/isolate", json_body={"Comment": "c"}) == {"id": "action"}
    assert sleeps == [12.0]


def test_429_storm_gives_up_after_the_wait_budget(client, requests_mock, sleeps):
    route = requests_mock.get(f"{API}/alerts", status_code=429, headers={"Retry-After": "50"},
                              json={"error": {"code": "TooManyRequests", "message": "quota", "target": "corr-9"}})
    with pytest.raises(mde.ApiError) as error:
        client.request("GET", "alerts")
    assert mde.MAX_RATE_LIMIT_WAIT == 120
    assert sleeps == [50.0, 50.0]  # a third wait would pass the 120-second budget: it gives up instead
    assert route.call_count == 3
    assert "HTTP 429" in str(error.value) and "corr-9" in str(error.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_reads_are_retried_with_backoff_on_5xx(client, requests_mock, sleeps, status):
    route = requests_mock.get(f"{API}/machines", [{"status_code": status, "text": "oops"}] * 2 + [
        {"json": {"value": []}}])
    assert client.request("GET", "machines") == {"value": []}
    assert route.call_count == 3
    assert sleeps == [1.0, 2.0]


def test_reads_give_up_after_max_retries(client, requests_mock, sleeps):
    route = requests_mock.get(f"{API}/machines", status_code=503, json={"error": {"code": "ServiceUnavailable"}})
    with pytest.raises(mde.ApiError, match="HTTP 503"):
        client.request("GET", "machines")
    assert route.call_count == mde.MAX_RETRIES + 1


def test_writes_are_not_repeated_after_a_5xx(client, requests_mock, sleeps):
    route = requests_mock.post(f"{API}/machines/abc/isolate", status_code=500, json={"error": {"code": "Internal"}})
    with pytest.raises(mde.ApiError):
        client.request("POST", "machines/abc/isolate", json_body={"Comment": "c"})
    assert route.call_count == 1 and sleeps == []


def test_writes_are_not_repeated_after_a_dropped_connection(client, requests_mock):
    route = requests_mock.post(f"{API}/machines/abc/isolate", exc=requests.exceptions.ConnectionError("reset"))
    with pytest.raises(mde.ApiError, match="Could not connect"):
        client.request("POST", "machines/abc/isolate", json_body={})
    assert route.call_count == 1


def test_reads_are_retried_after_a_dropped_connection(client, requests_mock):
    route = requests_mock.get(f"{API}/machines", [{"exc": requests.exceptions.ConnectionError("reset")},
                                                  {"json": {"value": [1]}}])
    assert client.request("GET", "machines") == {"value": [1]}
    assert route.call_count == 2


def test_tls_failures_explain_the_ca_bundle(client, requests_mock):
    requests_mock.get(f"{API}/machines", exc=requests.exceptions.SSLError("bad cert"))
    with pytest.raises(mde.ApiError, match="REQUESTS_CA_BUNDLE"):
        client.request("GET", "machines")


def test_verify_and_proxy_settings_are_sent_on_every_request(requests_mock):
    client = mde.Client("https://api.securitycenter.microsoft.com", mde.BearerAuth(StaticProvider()),
                        verify=False, proxies={"http": "", "https": ""})
    requests_mock.get(f"{API}/machines", json={"value": []})
    client.request("GET", "machines")
    assert requests_mock.last_request.verify is False
    assert requests_mock.last_request.proxies == {"http": "", "https": ""}
    assert requests_mock.last_request.timeout == (mde.CONNECT_TIMEOUT, mde.READ_TIMEOUT)


def test_microsoft_error_bodies_become_clear_messages(client, requests_mock):
    requests_mock.get(f"{API}/machines/abc", status_code=404, json={
        "error": {"code": "ResourceNotFound", "message": "Machine abc was not found", "target": "43f4cb08"}})
    with pytest.raises(mde.ApiError) as error:
        client.request("GET", "machines/abc")
    assert str(error.value) == ("GET /machines/abc failed with HTTP 404 ResourceNotFound: Machine abc was not found. "
                                "The object was not found. (correlation id: 43f4cb08)")
    assert error.value.code == "ResourceNotFound" and error.value.status == 404


def test_403_points_at_the_permissions_command(client, requests_mock):
    requests_mock.get(f"{API}/machines", status_code=403, json={"error": {"code": "Forbidden", "message": "no"}})
    with pytest.raises(mde.ApiError, match="microsoft-atp-list-auth-permissions"):
        client.request("GET", "machines")


def test_bearer_token_never_appears_in_error_messages(client, requests_mock):
    token = make_jwt()
    requests_mock.get(f"{API}/machines", status_code=400, text=f"Bad token Bearer {token}")
    with pytest.raises(mde.ApiError) as error:
        client.request("GET", "machines")
    assert token not in str(error.value)


# ---- paging ----------------------------------------------------------------------------------------


def machines(start: int, count: int) -> list[dict]:
    return [{"id": f"{i:040x}"} for i in range(start, start + count)]


def test_paging_uses_top_and_skip_until_a_short_page(client, requests_mock):
    total = 25_000

    def page(request, context):
        q = query(request)
        skip, top = int(q["$skip"][0]), int(q["$top"][0])
        return {"value": machines(skip, max(0, min(top, total - skip)))}

    route = requests_mock.get(f"{API}/machines", json=page)
    items = list(client.paginate("machines", {"$filter": "healthStatus eq 'Active'"}))
    assert len(items) == total and len({i["id"] for i in items}) == total
    assert [(q["$top"], q["$skip"]) for q in map(query, route.request_history)] == [
        (["10000"], ["0"]), (["10000"], ["10000"]), (["10000"], ["20000"])]
    assert all(q["$filter"] == ["healthStatus eq 'Active'"] for q in map(query, route.request_history))


def test_paging_respects_limit_and_offset(client, requests_mock):
    route = requests_mock.get(f"{API}/alerts", json=lambda r, c: {"value": machines(0, int(query(r)["$top"][0]))})
    assert len(list(client.paginate("alerts", limit=30, offset=60))) == 30
    assert query(route.last_request)["$top"] == ["30"] and query(route.last_request)["$skip"] == ["60"]


def test_paging_follows_next_link_and_stops_when_it_repeats(client, requests_mock):
    next_url = f"{API}/machines?$skip=2"
    requests_mock.get(f"{API}/machines", [
        {"json": {"value": machines(0, 2), "@odata.nextLink": next_url}},
        {"json": {"value": machines(2, 2), "@odata.nextLink": next_url}}])
    items = list(client.paginate("machines", page_size=2, limit=None))
    assert [i["id"] for i in items] == [m["id"] for m in machines(0, 4)]
    assert requests_mock.call_count == 2


def test_paging_stops_when_the_same_page_comes_back(client, requests_mock):
    requests_mock.get(f"{API}/machines", json={"value": machines(0, 2)})
    assert len(list(client.paginate("machines", page_size=2))) == 2
    assert requests_mock.call_count == 2


# ---- OData -------------------------------------------------------------------------------------------


def test_odata_literals_are_escaped():
    built = mde.ODataFilter().eq("computerDnsName", "o'brien's-pc").build()
    assert built == "computerDnsName eq 'o''brien''s-pc'"


def test_odata_builder_combines_clauses():
    when = mde.parse_iso_datetime("2024-05-01T10:00:00.1234567Z")
    built = (mde.ODataFilter({"id", "status", "computerDnsName", "alertCreationTime", "machineTags"})
             .one_of("id", ["a", "b'c"]).one_of("status", ["New"])
             .startswith_any("computerDnsName", ["web", "db"])
             .compare("alertCreationTime", "ge", when)
             .any_of(mde.ODataFilter({"id"}).eq("id", "x"), mde.ODataFilter({"status"}).one_of("status", ["A", "B"]))
             .build())
    assert built == ("id in ('a', 'b''c') and status eq 'New' and "
                     "(startswith(computerDnsName,'web') or startswith(computerDnsName,'db')) and "
                     "alertCreationTime ge 2024-05-01T10:00:00.123456Z and ((id eq 'x') or (status in ('A', 'B')))")


@pytest.mark.parametrize(("text", "microseconds"), [
    ("2024-05-01T10:00:00Z", 0), ("2024-05-01T10:00:00.1Z", 100_000), ("2024-05-01T10:00:00.12Z", 120_000),
    ("2024-05-01T10:00:00.1234Z", 123_400), ("2024-05-01T10:00:00.12345+00:00", 123_450),
    ("2024-05-01T10:00:00.123456Z", 123_456), ("2024-05-01T10:00:00.1234567Z", 123_456),
    ("2024-05-01 10:00:00.5", 500_000)])
def test_microsoft_timestamps_parse_with_any_number_of_fractional_digits(text, microseconds):
    """Microsoft sends 0 to 7 fractional digits; Python 3.10's fromisoformat alone takes only 3 or 6."""
    parsed = mde.parse_iso_datetime(text)
    assert parsed == dt.datetime(2024, 5, 1, 10, 0, 0, microseconds, tzinfo=dt.timezone.utc)


def test_odata_builder_rejects_unsupported_fields():
    with pytest.raises(ValueError, match="cannot be filtered"):
        mde.ODataFilter({"id"}).eq("secret", "x")


def test_odata_values_are_sent_percent_encoded(client, requests_mock):
    requests_mock.get(f"{API}/machines", json={"value": []})
    client.request("GET", "machines", params={"$filter": mde.ODataFilter().eq("computerDnsName", "a b'&c").build()})
    assert "?$filter=computerDnsName%20eq%20'a%20b''%26c'" in requests_mock.last_request.url
    assert query(requests_mock.last_request)["$filter"] == ["computerDnsName eq 'a b''&c'"]


# ---- arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: mde.arg_to_int("ten", "limit"), "limit must be a whole number"),
    (lambda: mde.arg_to_int("0", "limit", minimum=1), "limit must be at least 1"),
    (lambda: mde.arg_to_bool("maybe", "all_results"), "all_results must be true or false"),
    (lambda: mde.arg_choice("Partial", "isolation_type", ["Full", "Selective"]), "isolation_type must be one of"),
    (lambda: mde.arg_to_datetime("yesterday-ish", "timestamp"), "timestamp must be an ISO 8601 time"),
    (lambda: mde.validate_machine_id("abc"), "machine_id must be a machine ID of 40 hexadecimal"),
    (lambda: mde.validate_sha1("abc"), "file_hash must be a SHA-1"),
    (lambda: mde.validate_ip("1.2.3"), "ip must be an IPv4 or IPv6"),
])
def test_argument_errors_name_the_argument(call, message):
    with pytest.raises(mde.ArgumentError, match=message):
        call()


def test_relative_and_iso_times():
    now = mde.parse_iso_datetime("2024-05-10T00:00:00Z")
    assert mde.format_datetime(mde.arg_to_datetime("3 days", "t", now=now)) == "2024-05-07T00:00:00Z"
    assert mde.format_datetime(mde.arg_to_datetime("12 hours ago", "t", now=now)) == "2024-05-09T12:00:00Z"
    assert mde.format_datetime(mde.arg_to_datetime("2024-05-01T10:00:00.1234567Z", "t")) == (
        "2024-05-01T10:00:00.123456Z")
    assert mde.arg_choice("full", "isolation_type", ["Full", "Selective"]) == "Full"


def test_a_nested_or_group_keeps_its_parentheses_beside_other_clauses():
    def f() -> mde.ODataFilter:
        return mde.ODataFilter()

    nested = f().eq("c", 3).any_of(f().any_of(f().eq("a", 1), f().eq("b", 2))).build()
    assert nested == "c eq 3 and ((a eq 1) or (b eq 2))"
    assert f().any_of(f().any_of(f().eq("a", 1), f().eq("b", 2))).build() == "(a eq 1) or (b eq 2)"
    assert f().any_of(f().eq("a", 1).eq("b", 2), f().eq("c", 3)).build() == "(a eq 1 and b eq 2) or (c eq 3)"


def test_paging_never_follows_a_next_link_to_another_host(client, requests_mock):
    first = requests_mock.get(f"{API}/machines", json={"value": [{"id": "1"}],
                                                       "@odata.nextLink": "https://evil.example/api/machines?page=2"})
    stolen = requests_mock.get("https://evil.example/api/machines", json={"value": [{"id": "2"}]})

    assert [m["id"] for m in client.paginate("machines", page_size=1)] == ["1"]
    assert first.call_count == 1 and stolen.call_count == 0

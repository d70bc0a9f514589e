"""fetch-incidents: the query it sends, the incidents it makes, and that across runs every matching alert is
fetched exactly once (bursts on one timestamp, page boundaries, late arrivals, small max fetch, failed runs)."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests
from conftest import API, client_credentials_params, mock_entra

import MicrosoftDefenderForEndpoint as mde

ALERTS = f"{API}/alerts"
UTC = dt.timezone.utc
BASE = dt.datetime(2024, 5, 1, tzinfo=UTC)
TICKS_PER_SECOND = 10_000_000  # Microsoft's timestamps carry 7 fractional digits (100 ns ticks)
SOURCES = ["WindowsDefenderAtp", "WindowsDefenderAv", "CustomerTI", "AutomatedInvestigation", "MTP"]


def timestamp(ticks: int) -> str:
    """BASE + ticks as Microsoft writes it, e.g. 2024-05-01T10:00:00.1234567Z."""
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    return (BASE + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:07d}Z"


def ticks_of(text: str) -> int:
    """The inverse of `timestamp` for any ISO literal the plugin sends (0 to 7 fractional digits)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?Z", text)
    assert match, f"not an unquoted UTC datetime literal: {text}"
    whole = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
    return int((whole - BASE).total_seconds()) * TICKS_PER_SECOND + int((match.group(2) or "0").ljust(7, "0"))


def make_alert(n: int, ticks: int, *, status: str = "New", severity: str = "High",
               source: str = "WindowsDefenderAtp", visible_at: int = 0) -> dict:
    return {"id": f"da{n:06d}_{ticks}", "title": f"Alert number {n}", "severity": severity, "status": status,
            "detectionSource": source, "alertCreationTime": timestamp(ticks), "_ticks": ticks,
            "_visible_at": visible_at, "_evidence": [{"entityType": "File", "sha1": f"{n:040x}"}]}


@dataclass
class FakeDefender:
    """Just enough of GET /alerts: $filter with `ge`, `eq`, `in` joined by `and`, $orderby on the creation time,
    $top/$skip, $expand=evidence. Only alerts visible at `now` (in ticks) are served."""

    alerts: list[dict] = field(default_factory=list)
    now: int = 0
    requests: list[dict] = field(default_factory=list)
    page_size: int = 10_000  # like Microsoft, serve at most this many per response and link to the rest

    @staticmethod
    def predicate(clause: str) -> Callable[[dict], bool]:
        name, operator, value = re.fullmatch(r"(\w+) (ge|eq|in) (.+)", clause).groups()
        if operator == "ge":
            assert name == "alertCreationTime", clause
            boundary = ticks_of(value)
            return lambda alert: alert["_ticks"] >= boundary
        values = re.findall(r"'((?:[^']|'')*)'", value)
        assert operator == "in" or len(values) == 1, clause
        return lambda alert: alert[name] in values

    def query(self, params: dict[str, str]) -> list[dict]:
        tests = [self.predicate(c) for c in params["$filter"].split(" and ")] if params.get("$filter") else []
        rows = [a for a in self.alerts if a["_visible_at"] <= self.now and all(test(a) for test in tests)]
        if params.get("$orderby"):
            assert params["$orderby"] == "alertCreationTime asc"
            rows.sort(key=lambda a: a["_ticks"])
        skip, top = int(params.get("$skip", 0)), int(params.get("$top", 10_000))
        expand = params.get("$expand") == "evidence"
        return [served(a, expand) for a in rows[skip:skip + top]]

    def callback(self, request, context) -> dict:
        params = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
        self.requests.append(params)
        rows = self.query(params)
        body: dict = {"value": rows[:self.page_size]}
        if len(rows) > self.page_size:
            rest = {**params, "$skip": str(int(params.get("$skip", 0)) + self.page_size),
                    "$top": str(int(params.get("$top", 10_000)) - self.page_size)}
            body["@odata.nextLink"] = f"{ALERTS}?{urlencode(rest)}"
        return body


def served(alert: dict, with_evidence: bool) -> dict:
    body = {k: v for k, v in alert.items() if not k.startswith("_")}
    if with_evidence:
        body["evidence"] = alert["_evidence"]
    return body


@pytest.fixture
def fake(requests_mock) -> FakeDefender:
    mock_entra(requests_mock)
    defender = FakeDefender()
    requests_mock.get(ALERTS, json=defender.callback)
    return defender


def fetch_params(**overrides) -> dict:
    return client_credentials_params(**{"isFetch": True, "first_fetch_timestamp": timestamp(0), "max_fetch": "50",
                                        "fetch_status": "", "fetch_severity": "", **overrides})


def fetched_ids(run) -> list[str]:
    return [incident["dbotMirrorId"] for incident in run.incidents]


# ---- the query ------------------------------------------------------------------------------------------------


def test_first_run_queries_from_the_first_fetch_time_with_the_filters(xsoar, fake, requests_mock):
    xsoar.params = fetch_params(
        first_fetch_timestamp="2024-04-28T00:00:00Z", max_fetch="20", fetch_status=["New", "InProgress"],
        fetch_severity="High,medium", fetch_detectionsource="Antivirus,Custom TI,WindowsDefenderAtp",
        fetch_evidence="true")

    run = xsoar.run("fetch-incidents")

    assert run.results == [] and run.incidents == []
    assert parse_qs(urlparse(requests_mock.last_request.url).query) == {
        "$filter": ["alertCreationTime ge 2024-04-28T00:00:00Z and status in ('New', 'InProgress') and "
                    "severity in ('High', 'Medium') and detectionSource in ('WindowsDefenderAv', 'CustomerTI', "
                    "'WindowsDefenderAtp')"],
        "$orderby": ["alertCreationTime asc"], "$expand": ["evidence"], "$top": ["20"], "$skip": ["0"]}
    # nothing found: the next run starts where this one did
    assert xsoar.last_run == {"last_fetch_time": "2024-04-28T00:00:00Z", "forgotten_before": "2024-04-28T00:00:00Z",
                              "seen_ids": {}}


def test_a_relative_first_fetch_time(xsoar, fake):
    xsoar.params = fetch_params(first_fetch_timestamp="12 hours")

    xsoar.run("fetch-incidents")

    literal = fake.requests[0]["$filter"].removeprefix("alertCreationTime ge ")
    assert mde.parse_iso_datetime(literal) == xsoar.clock.utcnow() - dt.timedelta(hours=12)


@pytest.mark.parametrize("params, start", [
    ({"first_fetch": "2024-04-20T00:00:00Z"}, "2024-04-20T00:00:00Z"),  # the current parameter
    ({"first_fetch_timestamp": "2024-04-21T00:00:00Z"}, "2024-04-21T00:00:00Z"),  # an instance made by the original
    ({"first_fetch": "2024-04-20T00:00:00Z", "first_fetch_timestamp": "2024-04-21T00:00:00Z"}, "2024-04-20T00:00:00Z"),
    ({"first_fetch": "", "first_fetch_timestamp": "2024-04-21T00:00:00Z"}, "2024-04-21T00:00:00Z"),
])
def test_first_fetch_is_read_from_either_parameter_name(xsoar, fake, params, start):
    base = fetch_params()
    del base["first_fetch_timestamp"]
    xsoar.params = {**base, **params}

    xsoar.run("fetch-incidents")

    assert fake.requests[0]["$filter"] == f"alertCreationTime ge {start}"


def test_next_run_looks_back_from_the_newest_alert_and_skips_the_ones_seen(xsoar, fake):
    fake.alerts = [make_alert(1, 5 * 60 * TICKS_PER_SECOND + 1234567), make_alert(2, 5 * 60 * TICKS_PER_SECOND + 1234567)]
    fake.now = 10**12
    xsoar.params = fetch_params(fetch_lookback_minutes="3")

    first = xsoar.run("fetch-incidents")
    second = xsoar.run("fetch-incidents")

    assert sorted(fetched_ids(first)) == [a["id"] for a in fake.alerts] and second.incidents == []
    assert fake.requests[1]["$filter"] == "alertCreationTime ge 2024-05-01T00:02:00.123456Z"
    assert fake.requests[1]["$top"] == "52"  # max fetch + the ids remembered inside the window
    assert xsoar.last_run == {
        "last_fetch_time": "2024-05-01T00:05:00.123456Z", "forgotten_before": "2024-05-01T00:02:00.123456Z",
        "seen_ids": {a["id"]: "2024-05-01T00:05:00.123456Z" for a in fake.alerts}}


def test_incidents_carry_name_time_severity_raw_alert_and_mirror_id(xsoar, fake):
    severities = ["Informational", "Low", "Medium", "High", "UnSpecified"]
    fake.alerts = [make_alert(n, n, severity=severity) for n, severity in enumerate(severities)]
    xsoar.params = fetch_params(fetch_evidence=True)

    run = xsoar.run("fetch-incidents")

    first = run.incidents[0]
    # the original's exact name: classification and pre-processing rules match on it
    assert first == {"name": f"Microsoft Defender ATP Alert {fake.alerts[0]['id']}", "details": "Alert number 0",
                     "occurred": "2024-05-01T00:00:00.0000000Z", "severity": 0.5,
                     "rawJSON": json.dumps(served(fake.alerts[0], True)), "dbotMirrorId": fake.alerts[0]["id"]}
    assert [i["severity"] for i in run.incidents] == [0.5, 1, 2, 3, 0]
    assert json.loads(first["rawJSON"])["evidence"] == [{"entityType": "File", "sha1": f"{0:040x}"}]


def test_without_fetch_evidence_the_raw_alert_has_no_evidence(xsoar, fake):
    fake.alerts = [make_alert(1, 1)]
    xsoar.params = fetch_params()

    run = xsoar.run("fetch-incidents")

    assert "$expand" not in fake.requests[0]
    assert "evidence" not in json.loads(run.incidents[0]["rawJSON"])


# ---- parameters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"max_fetch": "0"}, "max_fetch (Maximum number of incidents to fetch) must be at least 1"),
    ({"max_fetch": "10001"}, "max_fetch (Maximum number of incidents to fetch) must be at most 10000"),
    ({"max_fetch": "many"}, "max_fetch (Maximum number of incidents to fetch) must be a whole number"),
    ({"first_fetch_timestamp": "last week"}, "first_fetch_timestamp (First fetch timestamp) must be an ISO 8601"),
    ({"first_fetch": "last week"}, "first_fetch (First fetch timestamp) must be an ISO 8601"),
    ({"fetch_status": "New,Closed"}, "fetch_status (Status) must be one of New, InProgress, Resolved"),
    ({"fetch_severity": ["High", "Critical"]}, "fetch_severity (Severity) must be one of Informational"),
    ({"fetch_detectionsource": "Antivirus,Telepathy"}, "fetch_detectionsource (DetectionSource) must be one of"),
    ({"fetch_lookback_minutes": "-1"}, "fetch_lookback_minutes (Look-back window) must be at least 0"),
    ({"fetch_lookback_minutes": "1441"}, "fetch_lookback_minutes (Look-back window) must be at most 1440"),
    ({"fetch_evidence": "sometimes"}, "fetch_evidence (Fetch alert evidence) must be true or false"),
])
def test_parameter_errors_name_the_parameter_and_leave_the_last_run(xsoar, fake, overrides, message):
    xsoar.params = fetch_params(**overrides)
    xsoar.last_run = {"last_fetch_time": "2024-05-01T00:00:00Z", "forgotten_before": "2024-05-01T00:00:00Z",
                      "seen_ids": {}}

    run = xsoar.run("fetch-incidents")

    assert message in run.error
    assert fake.requests == [] and run.incidents == []
    assert xsoar.last_run["last_fetch_time"] == "2024-05-01T00:00:00Z"


def test_an_unreadable_last_run_is_reported_not_guessed(xsoar, fake):
    xsoar.params = fetch_params()
    xsoar.last_run = {"last_fetch_time": "yesterday", "seen_ids": {}}

    run = xsoar.run("fetch-incidents")

    assert "The saved fetch state cannot be read" in run.error and "Reset the instance's last run" in run.error
    assert fake.requests == []


def test_the_older_integrations_last_run_is_continued_without_duplicates(xsoar, fake):
    fake.alerts = [make_alert(1, 100), make_alert(2, 100), make_alert(3, 200)]
    xsoar.params = fetch_params()
    xsoar.last_run = {"last_fetch_time": timestamp(100), "existing_ids": [fake.alerts[0]["id"]]}

    run = xsoar.run("fetch-incidents")

    assert fake.requests[0]["$filter"] == "alertCreationTime ge 2024-05-01T00:00:00.00001Z"
    assert fetched_ids(run) == [fake.alerts[1]["id"], fake.alerts[2]["id"]]


# ---- failures leave the last run untouched --------------------------------------------------------------------


def burst(count: int, ticks: int = 50 * TICKS_PER_SECOND) -> list[dict]:
    return [make_alert(n, ticks) for n in range(count)]


def test_a_failed_run_leaves_the_last_run_and_the_next_run_resumes(xsoar, fake, requests_mock):
    fake.alerts = burst(10)
    xsoar.params = fetch_params(max_fetch="4")
    taken = fetched_ids(xsoar.run("fetch-incidents"))
    saved = dict(xsoar.last_run)

    requests_mock.get(ALERTS, status_code=500, json={"error": {"code": "InternalServerError", "message": "boom",
                                                               "target": "t-500"}})
    server_error = xsoar.run("fetch-incidents")
    requests_mock.get(ALERTS, exc=requests.exceptions.ConnectionError("connection reset"))
    dropped = xsoar.run("fetch-incidents")
    requests_mock.get(ALERTS, status_code=429, headers={"Retry-After": "50"},
                      json={"error": {"code": "TooManyRequests", "message": "quota", "target": "t-429"}})
    rate_limited = xsoar.run("fetch-incidents")

    assert "HTTP 500 InternalServerError: boom" in server_error.error and "t-500" in server_error.error
    assert "Could not connect to api.securitycenter.microsoft.com" in dropped.error
    assert "HTTP 429 TooManyRequests" in rate_limited.error
    assert sum(xsoar.sleeps) > 0 and all(run.incidents == [] for run in (server_error, dropped, rate_limited))
    assert xsoar.last_run == saved

    requests_mock.get(ALERTS, json=fake.callback)
    taken += fetched_ids(xsoar.run("fetch-incidents"))
    taken += fetched_ids(xsoar.run("fetch-incidents"))
    assert sorted(taken) == sorted(a["id"] for a in fake.alerts)


def test_a_failure_on_a_later_page_emits_nothing(xsoar, fake, requests_mock, monkeypatch):
    fake.page_size = 2
    fake.alerts = burst(5)
    xsoar.params = fetch_params(max_fetch="5")
    calls = []

    def second_page_fails(request, context):
        calls.append(request.url)
        if len(calls) > 1:
            context.status_code = 503
            return {"error": {"code": "ServiceUnavailable", "message": "try later"}}
        return fake.callback(request, context)

    requests_mock.get(ALERTS, json=second_page_fails)
    failed = xsoar.run("fetch-incidents")

    assert "HTTP 503" in failed.error and failed.incidents == [] and xsoar.last_run == {}
    requests_mock.get(ALERTS, json=fake.callback)
    assert sorted(fetched_ids(xsoar.run("fetch-incidents"))) == sorted(a["id"] for a in fake.alerts)


# ---- bursts, page boundaries and max fetch --------------------------------------------------------------------


def test_a_burst_larger_than_max_fetch_and_split_across_pages_comes_out_whole(xsoar, fake, monkeypatch):
    fake.page_size = 7
    fake.alerts = burst(300) + [make_alert(1000, 60 * TICKS_PER_SECOND)]
    xsoar.params = fetch_params(max_fetch="13")

    taken: list[str] = []
    for _ in range(40):
        run = xsoar.run("fetch-incidents")
        assert len(run.incidents) <= 13
        taken += fetched_ids(run)

    assert len(taken) == len(set(taken)) == 301
    assert taken[-1] == fake.alerts[-1]["id"]  # the later alert only after the whole burst


def test_remembered_ids_stay_within_the_look_back_window(xsoar, fake):
    # an alert every 30 seconds for five hours, visible as soon as it is created; one fetch every minute
    step = 30 * TICKS_PER_SECOND
    fake.alerts = [make_alert(n, n * step, visible_at=n * step) for n in range(600)]
    xsoar.params = fetch_params(max_fetch="7", fetch_lookback_minutes="10")

    taken, sizes = [], []
    for minute in range(1, 400):
        fake.now = minute * 60 * TICKS_PER_SECOND
        taken += fetched_ids(xsoar.run("fetch-incidents"))
        seen = xsoar.last_run["seen_ids"]
        floor = ticks_of(xsoar.last_run["forgotten_before"])
        assert all(ticks_of(created) >= floor for created in seen.values())
        sizes.append(len(seen))

    assert len(taken) == len(set(taken)) == 600
    assert max(sizes) <= 21  # the alerts of one 10-minute window
    assert sizes[-1] == 21


# ---- property: fetched == visible matching alerts, each exactly once ------------------------------------------


def random_stream(rng: random.Random, lookback_ticks: int, max_burst: int) -> list[dict]:
    """Bursts on one timestamp (up to `max_burst`), neighbours one tick apart, alerts that become visible late
    (inside the look-back window) and a few created before the first fetch time."""
    alerts, ticks, n = [], 0, 0
    for _ in range(rng.randint(1, 12)):
        ticks += rng.choice([0, 1, rng.randint(1, 10**7), rng.randint(10**7, 10**10)])
        size = rng.choice([1, 1, 2, 3, rng.randint(5, 40), rng.randint(41, max_burst) if rng.random() < 0.15 else 4])
        for _ in range(size):
            created = ticks + rng.choice([0, 0, 0, 1, rng.randint(0, 10**6)])
            late = rng.random() < 0.2
            visible_at = created + (rng.randint(1, lookback_ticks // 2 - 1) if late else 0)
            alerts.append(make_alert(n, created, status=rng.choice(mde.ALERT_STATUSES),
                                     severity=rng.choice([*mde.ALERT_SEVERITIES, "UnSpecified"]),
                                     source=rng.choice(SOURCES), visible_at=visible_at))
            n += 1
    alerts += [make_alert(n + i, -rng.randint(1, 10**9)) for i in range(rng.randint(0, 3))]  # before first fetch
    rng.shuffle(alerts)  # the service stores them in no particular order
    return alerts


def advance(rng: random.Random, defender: FakeDefender, lookback_ticks: int) -> None:
    """Time of the next fetch run: a little later, or when the next alert becomes visible (runs come closer
    together or further apart than the delay of late alerts)."""
    pending = [a["_visible_at"] for a in defender.alerts if a["_visible_at"] > defender.now]
    if pending and rng.random() < 0.5:
        defender.now = min(pending)
    else:
        defender.now += rng.randint(0, lookback_ticks // 2)


def resolve_some(rng: random.Random, defender: FakeDefender, fetched: list[str], statuses: list[str]) -> None:
    """Analysts work on incidents: some fetched alerts move to a status the fetch filter excludes, so they drop
    out of the window's results and the alerts behind them move up."""
    outside = [status for status in mde.ALERT_STATUSES if statuses and status not in statuses]
    by_id = {a["id"]: a for a in defender.alerts}
    for alert_id in fetched:
        if outside and rng.random() < 0.5:
            by_id[alert_id]["status"] = rng.choice(outside)


def random_subset(rng: random.Random, values) -> list[str]:
    return rng.sample(list(values), rng.randint(0, len(values)))


def as_param(rng: random.Random, values: list[str]):
    """Multi-select parameters arrive as a list or as a comma-separated string."""
    return values if rng.random() < 0.5 else ",".join(values)


@pytest.mark.parametrize("seed", range(30))
def test_every_matching_alert_is_fetched_exactly_once(xsoar, fake, monkeypatch, seed):
    rng = random.Random(seed)
    lookback_minutes = rng.choice([1, 5, 10])
    lookback_ticks = lookback_minutes * 60 * TICKS_PER_SECOND
    fake.alerts = random_stream(rng, lookback_ticks, max_burst=60)
    max_fetch = rng.randint(1, 7)
    fake.page_size = rng.randint(1, 7)
    statuses, severities = random_subset(rng, mde.ALERT_STATUSES), random_subset(rng, mde.ALERT_SEVERITIES)
    sources = random_subset(rng, SOURCES[:3])
    xsoar.params = fetch_params(max_fetch=str(max_fetch), fetch_lookback_minutes=str(lookback_minutes),
                                fetch_status=as_param(rng, statuses), fetch_severity=as_param(rng, severities),
                                fetch_detectionsource=as_param(rng, sources))

    def wanted(alert: dict) -> bool:
        return (ticks_of(alert["alertCreationTime"]) >= 0 and (not statuses or alert["status"] in statuses)
                and (not severities or alert["severity"] in severities)
                and (not sources or alert["detectionSource"] in sources))

    expected = {a["id"] for a in fake.alerts if wanted(a)}
    last_visible = max(a["_visible_at"] for a in fake.alerts)
    taken: list[str] = []
    for _ in range(3 * len(fake.alerts) + 100):
        advance(rng, fake, lookback_ticks)
        run = xsoar.run("fetch-incidents")
        assert run.results == [], run.results
        assert len(run.incidents) <= max_fetch
        taken += fetched_ids(run)
        resolve_some(rng, fake, fetched_ids(run), statuses)
        if fake.now >= last_visible and not run.incidents:
            break
    else:
        pytest.fail("fetching never caught up")

    assert len(taken) == len(set(taken)), "an alert was fetched twice"
    assert set(taken) == expected, f"missed {sorted(expected - set(taken))[:5]}, extra {sorted(set(taken) - expected)[:5]}"


@pytest.mark.parametrize("seed", range(300))
def test_the_pure_fetch_functions_fetch_every_alert_once(seed):
    """The same property without HTTP, over many more streams: the query from the last run, the page stream
    (served oldest first, cut at the limit the plugin asks for), the selection and the next last run."""
    rng = random.Random(10_000 + seed)
    lookback = dt.timedelta(minutes=rng.choice([0, 1, 10]))
    lookback_ticks = max(int(lookback.total_seconds()) * TICKS_PER_SECOND, 4)
    defender = FakeDefender(alerts=random_stream(rng, lookback_ticks, max_burst=300))
    if lookback == dt.timedelta(0):  # without a look-back window nothing may arrive late
        for alert in defender.alerts:
            alert["_visible_at"] = 0
    statuses = random_subset(rng, mde.ALERT_STATUSES)
    settings = mde.FetchSettings(first_fetch=BASE, max_fetch=rng.randint(1, 7), lookback=lookback,
                                 statuses=statuses, severities=[], detection_sources=[], evidence=False)
    expected = {a["id"] for a in defender.alerts
                if ticks_of(a["alertCreationTime"]) >= 0 and (not statuses or a["status"] in statuses)}
    last_visible = max(a["_visible_at"] for a in defender.alerts)
    last_run: dict = {}
    taken: list[str] = []
    for _ in range(3 * len(defender.alerts) + 100):
        advance(rng, defender, lookback_ticks)
        cursor = mde.FetchCursor.from_last_run(last_run, settings.first_fetch)
        rows = defender.query({"$filter": mde.fetch_alerts_filter(cursor, settings),
                               "$orderby": mde.FETCH_ORDER, "$top": str(settings.max_fetch + len(cursor.seen))})
        new, next_cursor = mde.select_new_alerts(rows, cursor, settings)
        assert len(new) <= settings.max_fetch
        taken += [a["id"] for a in new]
        resolve_some(rng, defender, [a["id"] for a in new], statuses)
        last_run = json.loads(json.dumps(next_cursor.to_last_run()))
        if defender.now >= last_visible and not new:
            break
    else:
        pytest.fail("fetching never caught up")

    assert len(taken) == len(set(taken))
    assert set(taken) == expected

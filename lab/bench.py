"""`make bench`: count what matters (API requests per endpoint, token requests, 429s, failures, time)
for the scenarios users run most, through the `mde` CLI against the emulator."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from lab.emulator import Emulator
from lab.instances import cli_env, write_instances
from lab.runner import REPO, Mde

BENCH_DIR = REPO / ".bench"


@dataclass
class Outcome:
    name: str
    runs: int = 0
    failures: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of the CLI processes
    requests: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    throttled: int = 0
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)


class Bench:
    def __init__(self, emulator: Emulator, workdir: Path, params: dict | None = None):
        self.emulator = emulator
        self.instances = write_instances(emulator.ready, workdir / "instances")
        if params:
            add_params(self.instances["client-credentials"], params)
        self.mde = Mde(state_dir=workdir / "state", env=cli_env(emulator.ready), output_dir=workdir / "files")
        self.instance = self.instances["client-credentials"]

    def scenario(self, name: str, body: Callable[[Outcome], None]) -> Outcome:
        self.emulator.reset_counters()
        outcome = Outcome(name)
        started, cpu_started = time.monotonic(), children_cpu_seconds()
        body(outcome)
        outcome.seconds = time.monotonic() - started
        outcome.cpu_seconds = children_cpu_seconds() - cpu_started
        counters = self.emulator.counters()
        outcome.requests = {k: v for k, v in counters["requests"].items() if v and "/api/" in k}
        outcome.tokens = sum(counters["token_requests"].values())
        outcome.throttled = counters["responses"].get("429", 0)
        return outcome

    def run(self, outcome: Outcome, command: str, *args: str, options: tuple[str, ...] = ()) -> str:
        result = self.mde.run(self.instance, command, *args, options=options)
        outcome.runs += 1
        if result.returncode != 0:
            outcome.failures += 1
            outcome.notes.append(result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed")
        return result.stdout


def children_cpu_seconds() -> float:
    """CPU time of finished child processes (the CLI runs; the emulator is still running and not counted)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_params(instance: Path, params: dict) -> None:
    document = yaml.safe_load(instance.read_text())
    document["params"].update(params)
    instance.write_text(yaml.safe_dump(document, sort_keys=False))


def direct_api_get(emulator: Emulator, path: str, params: dict, session: requests.Session | None = None) -> dict:
    """A Defender API call made straight to the emulator as the benchmark's app, outside the CLI."""
    session = session or direct_session(emulator)
    # verify per request: REQUESTS_CA_BUNDLE in the environment would override session.verify
    return session.get(f"{emulator.ready['api_url']}/api/{path}", params=params, timeout=30,
                       verify=emulator.ready["ca_bundle"]).json()


def direct_session(emulator: Emulator) -> requests.Session:
    """A session holding one token of the benchmark's app (one token request)."""
    ready = emulator.ready
    client = ready["clients"]["full"]
    token = requests.post(f"{ready['login_url']}/{ready['tenant_id']}/oauth2/v2.0/token", verify=ready["ca_bundle"],
                          timeout=30, data={"grant_type": "client_credentials", "client_id": client["client_id"],
                                            "client_secret": client["client_secret"],
                                            "scope": "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"}
                          ).json()["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def consume_quota(emulator: Emulator, count: int) -> None:
    """Spend most of the app's per-minute quota, so the CLI's listing meets the limit."""
    session = direct_session(emulator)
    for _ in range(count):
        direct_api_get(emulator, "machines", {"$top": 1}, session)


# ---- scenarios ------------------------------------------------------------------------------------


def separate_runs(bench: Bench, machine_id: str) -> Outcome:
    def body(o: Outcome) -> None:
        bench.mde.run(bench.instance, "microsoft-atp-auth-reset")
        for _ in range(50):
            bench.run(o, "microsoft-atp-get-machine-details", f"machine_id={machine_id}")
    outcome = bench.scenario("50 separate CLI runs of get-machine-details", body)
    outcome.checks = [("token requests == 1", outcome.tokens == 1), ("zero failures", outcome.failures == 0)]
    return outcome


def inventory_walk(bench: Bench, total: int, rate_limited: bool) -> Outcome:
    def body(o: Outcome) -> None:
        bench.run(o, "microsoft-atp-test")  # a token in hand before the clock matters
        if rate_limited:
            bench.emulator.set_faults(rate_limit_per_minute=100, rate_limit_window_seconds=60)
            consume_quota(bench.emulator, 98)
            o.notes.append("98 of the app's 100 calls/min spent beforehand")
        out = bench.run(o, "microsoft-atp-get-machines", "all_results=true", options=("--json",))
        count = out.count('"ComputerDNSName"')
        o.notes.append(f"{count} machines listed")
        o.checks.append((f"{total} machines listed", count == total))
        bench.emulator.set_faults(rate_limit_per_minute=None)
    name = f"list {total:,} machines" + (" under 100 calls/min" if rate_limited else "")
    outcome = bench.scenario(name, body)
    pages = outcome.requests.get("GET /api/machines", 0) - (98 if rate_limited else 0) - outcome.throttled
    outcome.checks.append((f"machine pages == 3 (saw {pages}, plus {outcome.throttled} refused with 429)",
                           pages == 3))
    outcome.checks.append(("zero failures", outcome.failures == 0))
    return outcome


def isolate_fifty(bench: Bench, machine_ids: list[str]) -> Outcome:
    def body(o: Outcome) -> None:
        bench.run(o, "microsoft-atp-isolate-machine", f"machine_id={','.join(machine_ids)}", "comment=bench",
                  "isolation_type=Full", "polling=true", options=("--poll-interval-override", "1"))
    outcome = bench.scenario("isolate 50 machines, polling to completion", body)
    posts = sum(v for k, v in outcome.requests.items() if k.endswith("/isolate"))
    status = outcome.requests.get("GET /api/machineactions", 0)
    outcome.notes.append(f"{posts} isolate requests, {status} status requests (one per poll round)")
    outcome.checks.append(("50 isolate requests", posts == 50))
    outcome.checks.append(("zero failures", outcome.failures == 0))
    return outcome


def fetch_backlog(bench: Bench, backlog: int, max_fetch: int) -> Outcome:
    def body(o: Outcome) -> None:
        fetched = 0
        for _ in range(backlog // max_fetch + 5):
            out = bench.run(o, "fetch", options=("--json",))
            batch = len(json.loads(out or "[]"))
            fetched += batch
            if batch == 0:
                break
        o.notes.append(f"{fetched} incidents in {o.runs} runs")
        o.checks.append((f"{backlog} incidents fetched", fetched == backlog))
    outcome = bench.scenario(f"ingest a {backlog:,}-alert backlog, max fetch {max_fetch}", body)
    alert_requests = outcome.requests.get("GET /api/alerts", 0)
    outcome.notes.append(f"{alert_requests / max(outcome.runs, 1):.2f} alert requests per run")
    return outcome


def import_indicators(workdir: Path, count: int = 10_000) -> Outcome:
    """Self-contained: its own emulator, a JSON file of `count` new indicators, one batch-update run."""
    with Emulator(machines=100, alerts=20, workdir=workdir) as emulator:
        bench = Bench(emulator, workdir)
        batch = workdir / "indicators.json"
        batch.write_text(json.dumps([
            {"indicatorValue": f"{i:064x}", "indicatorType": "FileSha256", "action": "Block", "title": "bench",
             "description": "bench import", "expirationTime": "30 days"} for i in range(1, count + 1)]))

        def body(o: Outcome) -> None:
            out = bench.run(o, "microsoft-atp-indicator-batch-update", f"indicator_batch={batch}",
                            options=("--json",))
            results = json.loads(out or "{}").get("MicrosoftATP.Indicators") or []
            o.notes.append(f"{sum(r['Outcome'] == 'Created' for r in results)} created, "
                           f"{sum(r['IsFailed'] for r in results)} failed")
            o.checks.append((f"{count:,} outcomes, all created", len(results) == count and all(
                r["Outcome"] == "Created" for r in results)))
        outcome = bench.scenario(f"import {count:,} indicators (batch-update)", body)
        stored = [i["indicatorValue"] for i in direct_api_get(emulator, "indicators",
                                                              {"$filter": "title eq 'bench'"})["value"]]
    calls = outcome.requests.get("POST /api/indicators/import", 0)
    duplicates = len(stored) - len(set(stored))
    outcome.notes.append(f"{calls} import calls, {outcome.requests.get('GET /api/indicators', 0)} listing call(s) "
                         "to tell creates from updates")
    outcome.checks += [(f"import calls == {count // 500} (saw {calls})", calls == count // 500),
                       (f"failures == 0 (saw {outcome.failures})", outcome.failures == 0),
                       (f"duplicates == 0 (saw {duplicates}; {len(stored):,} stored)",
                        duplicates == 0 and len(stored) == count)]
    return outcome


# ---- report ----------------------------------------------------------------------------------------


def report(outcomes: list[Outcome]) -> bool:
    ok = True
    print(f"\n{'scenario':<48} {'runs':>5} {'fail':>5} {'tokens':>6} {'429s':>5} {'time':>8} {'CLI CPU':>8}  "
          "API requests")
    print("-" * 120)
    for o in outcomes:
        requests_text = ", ".join(f"{k} ×{v}" for k, v in sorted(o.requests.items()))
        print(f"{o.name:<48} {o.runs:>5} {o.failures:>5} {o.tokens:>6} {o.throttled:>5} {o.seconds:>7.1f}s "
              f"{o.cpu_seconds:>7.1f}s  {requests_text}")
        for note in o.notes:
            print(f"{'':<50}· {note}")
        for label, passed in o.checks:
            ok &= passed
            print(f"{'':<50}{'✔' if passed else '✘'} {label}")
    return ok


def main() -> int:
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    outcomes = []
    with Emulator(machines=25_000, alerts=50, workdir=BENCH_DIR / "inventory",
                  extra_args=["--action-delay", "3"]) as emulator:
        bench = Bench(emulator, BENCH_DIR / "inventory")
        machine_ids = sample_machine_ids(emulator, 50)
        outcomes.append(separate_runs(bench, machine_ids[0]))
        outcomes.append(inventory_walk(bench, 25_000, rate_limited=False))
        outcomes.append(inventory_walk(bench, 25_000, rate_limited=True))
        outcomes.append(isolate_fifty(bench, machine_ids))
    with Emulator(machines=500, alerts=10_000, workdir=BENCH_DIR / "fetch") as emulator:
        bench = Bench(emulator, BENCH_DIR / "fetch", params={
            "max_fetch": "100", "first_fetch_timestamp": "365 days", "fetch_status": "New,InProgress,Resolved",
            "fetch_severity": "Informational,Low,Medium,High"})
        outcomes.append(fetch_backlog(bench, 10_000, 100))
    outcomes.append(import_indicators(BENCH_DIR / "indicators"))
    return 0 if report(outcomes) else 1


def sample_machine_ids(emulator: Emulator, count: int) -> list[str]:
    """Windows machines (isolation works there)."""
    machines = direct_api_get(emulator, "machines", {"$filter": "startswith(osPlatform,'Windows')", "$top": count})
    return [m["id"] for m in machines["value"]]


if __name__ == "__main__":
    sys.exit(main())

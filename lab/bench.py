"""`make bench`: the scenarios users run most, through the `mde` CLI against the emulator, and the goals of
issue 13. Every printed check is an assertion on the emulator's counters or on what the command printed;
each goal shows its measured value and PASS or FAIL, and the bench exits 1 when anything fails.

Costs are ratios to `python -c "import requests"` run interleaved in the same bench (medians of CPU time,
user + system, of each process), so a busy machine slows both sides alike. The CLI runs with
PYTHONDONTWRITEBYTECODE=1, as on the machines the issue was measured on.
"""

from __future__ import annotations

import compileall
import json
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from lab.emulator import Emulator, clean_env
from lab.instances import cli_env, write_instances
from lab.runner import REPO, Mde, Measured, run_measured

BENCH_DIR = REPO / ".bench"
PLUGIN = REPO / "MicrosoftDefenderForEndpoint.py"
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}
COST_ROUNDS = 9
GOALS = {"cli_ratio": 1.6, "fetch_ratio": 1.6, "import_ratio": 1.15, "entry_mb_10k": 11.0, "peak_mib": 300.0,
         "readable_kb": 100.0}
FINAL_ACTION_STATUSES = {"Succeeded", "Failed", "Cancelled", "TimeOut"}
ROUND_LINE = re.compile(r"^\[round \d+ ·", re.MULTILINE)
MIB = 1024 * 1024


@dataclass
class Check:
    label: str
    measured: str
    passed: bool


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
    checks: list[Check] = field(default_factory=list)
    baseline: dict | None = None  # counters taken after the set-up, subtracted from the scenario's counters

    def check(self, label: str, measured: object, passed: bool) -> None:
        self.checks.append(Check(label, str(measured), bool(passed)))

    @property
    def api_requests(self) -> int:
        return sum(self.requests.values())


class Bench:
    def __init__(self, emulator: Emulator, workdir: Path, params: dict | None = None):
        self.emulator = emulator
        self.instances = write_instances(emulator.ready, workdir / "instances")
        if params:
            add_params(self.instances["client-credentials"], params)
        self.mde = Mde(state_dir=workdir / "state", env={**cli_env(emulator.ready), **NO_BYTECODE},
                       output_dir=workdir / "files")
        self.instance = self.instances["client-credentials"]

    def scenario(self, name: str, body: Callable[[Outcome], None]) -> Outcome:
        """Runs `body` and fills in what the emulator counted meanwhile, less `outcome.baseline` when the body
        took one after setting things up with requests that must not count."""
        self.emulator.reset_counters()
        outcome = Outcome(name)
        started = time.monotonic()
        body(outcome)
        outcome.seconds = time.monotonic() - started
        counters = counter_difference(self.emulator.counters(), outcome.baseline)
        outcome.requests = {k: v for k, v in counters["requests"].items() if v and "/api/" in k}
        outcome.tokens = sum(counters["token_requests"].values())
        outcome.throttled = counters["responses"].get("429", 0)
        return outcome

    def take_baseline(self, outcome: Outcome) -> None:
        """Counters so far, to subtract later (resetting them would also reset the emulator's rate limiter)."""
        outcome.baseline = self.emulator.counters()

    def run(self, outcome: Outcome, command: str, *args: str, options: tuple[str, ...] = ()) -> Measured:
        result = self.mde.run_measured(self.instance, command, *args, options=options)
        outcome.runs += 1
        outcome.cpu_seconds += result.cpu_seconds
        if result.returncode != 0:
            outcome.failures += 1
            outcome.notes.append(result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed")
        return result


def counter_difference(after: dict, before: dict | None) -> dict:
    before = before or {}
    return {group: {key: value - (before.get(group) or {}).get(key, 0) for key, value in (counts or {}).items()}
            for group, counts in after.items() if isinstance(counts, dict)}


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


def context_items(output: str, path: str) -> list[dict]:
    """The objects under `path` in a `--json` output (an object or a list of them)."""
    value = json.loads(output or "{}").get(path) or []
    return [item for item in (value if isinstance(value, list) else [value]) if isinstance(item, dict)]


# ---- scenarios: request counts and correctness -----------------------------------------------------------


def separate_runs(bench: Bench, machine_id: str) -> Outcome:
    outputs: list[str] = []

    def body(o: Outcome) -> None:
        bench.mde.run(bench.instance, "microsoft-atp-auth-reset", check=True)
        bench.take_baseline(o)
        for _ in range(50):
            outputs.append(bench.run(o, "microsoft-atp-get-machine-details", f"machine_id={machine_id}").stdout)

    outcome = bench.scenario("50 separate CLI runs of get-machine-details", body)
    details = outcome.requests.get("GET /api/machines/{id}", 0)
    outcome.check("token requests == 1", outcome.tokens, outcome.tokens == 1)
    outcome.check("API requests == 50, all GET /api/machines/{id}", f"{outcome.api_requests} ({details} details)",
                  outcome.api_requests == 50 and details == 50)
    showing = sum(machine_id in out for out in outputs)
    outcome.check("runs that printed the machine == 50", showing, showing == 50)
    outcome.check("zero failures", outcome.failures, outcome.failures == 0)
    return outcome


def inventory_walk(bench: Bench, total: int, rate_limited: bool) -> Outcome:
    expected_pages = -(-total // 10_000)
    listed: list[dict] = []

    def body(o: Outcome) -> None:
        bench.run(o, "microsoft-atp-test")  # a token in hand before the clock matters
        if rate_limited:
            bench.emulator.set_faults(rate_limit_per_minute=100, rate_limit_window_seconds=60)
            consume_quota(bench.emulator, 98)
            o.notes.append("98 of the app's 100 calls/min spent beforehand (not counted below)")
        bench.take_baseline(o)
        try:
            result = bench.run(o, "microsoft-atp-get-machines", "all_results=true", options=("--json",))
        finally:
            bench.emulator.set_faults(rate_limit_per_minute=None)
        listed.extend(context_items(result.stdout, "MicrosoftATP.Machine") if result.returncode == 0 else [])

    name = f"list {total:,} machines" + (" under 100 calls/min" if rate_limited else "")
    outcome = bench.scenario(name, body)
    unique = len({m.get("ID") for m in listed})
    outcome.check(f"unique machine ids == {total:,}", f"{unique:,} unique of {len(listed):,}",
                  unique == total == len(listed))
    pages = outcome.requests.get("GET /api/machines", 0) - outcome.throttled
    outcome.check(f"machine pages answered == {expected_pages}", f"{pages} (+{outcome.throttled} refused with 429)",
                  pages == expected_pages)
    if rate_limited:
        outcome.check("the limit was met (429s >= 1)", outcome.throttled, outcome.throttled >= 1)
    outcome.check("zero failures", outcome.failures, outcome.failures == 0)
    return outcome


def isolate_fifty(bench: Bench, machine_ids: list[str]) -> Outcome:
    results: list[Measured] = []

    def body(o: Outcome) -> None:
        results.append(bench.run(o, "microsoft-atp-isolate-machine", f"machine_id={','.join(machine_ids)}",
                                 "comment=bench", "isolation_type=Full", "polling=true",
                                 options=("--poll-interval-override", "1", "--json")))

    outcome = bench.scenario("isolate 50 machines, polling to completion", body)
    result = results[0]
    posts = sum(v for k, v in outcome.requests.items() if k.endswith("/isolate"))
    status_requests = outcome.requests.get("GET /api/machineactions", 0)
    waits = len(ROUND_LINE.findall(result.stderr))  # one progress line per round that was not the last
    actions = context_items(result.stdout, "MicrosoftATP.MachineAction") if result.returncode == 0 else []
    statuses = sorted({str(a.get("Status")) for a in actions})
    outcome.notes.append(f"{waits + 1} rounds: the requests, then {status_requests} status checks")
    outcome.check("50 isolate requests", posts, posts == 50)
    outcome.check("50 distinct actions reported, all Succeeded",
                  f"{len({a.get('ID') for a in actions})} actions, statuses {', '.join(statuses) or 'none'}",
                  len({a.get("ID") for a in actions}) == 50 and statuses == ["Succeeded"])
    outcome.check("one status request per later round (>= 1)", f"{status_requests} requests, {waits} waits",
                  status_requests == waits >= 1)
    outcome.check("zero failures", outcome.failures, outcome.failures == 0)
    return outcome


def fetch_backlog(bench: Bench, backlog: int, max_fetch: int) -> Outcome:
    seen: list[str] = []

    def body(o: Outcome) -> None:
        for _ in range(backlog // max_fetch + 5):
            result = bench.run(o, "fetch", options=("--json",))
            batch = json.loads(result.stdout or "[]") if result.returncode == 0 else []
            seen.extend(str(json.loads(i.get("rawJSON") or "{}").get("id")) for i in batch)
            if result.returncode == 0 and not batch:
                break

    outcome = bench.scenario(f"ingest a {backlog:,}-alert backlog, max fetch {max_fetch}", body)
    unique = len(set(seen))
    outcome.notes.append(f"{len(seen):,} incidents in {outcome.runs} runs; "
                         f"{outcome.requests.get('GET /api/alerts', 0) / max(outcome.runs, 1):.2f} alert requests/run")
    outcome.check(f"unique alert ids fetched == {backlog:,}", f"{unique:,}", unique == backlog)
    outcome.check("no incident fetched twice", f"{len(seen) - unique:,} duplicates", len(seen) == unique)
    outcome.check("failed fetch runs == 0", outcome.failures, outcome.failures == 0)
    most_runs = -(-backlog // max_fetch) + 1  # full batches, then one run that finds nothing
    outcome.check(f"runs <= {most_runs}", outcome.runs, outcome.runs <= most_runs)
    return outcome


# ---- goals: cost per command, entry size, memory ---------------------------------------------------------


def command_costs(bench: Bench, machine_id: str) -> Outcome:
    """Interleaved runs, so load on the machine affects every kind alike; medians of CPU time."""
    fetcher = bench.instances["client-credentials"].with_name("cost-fetcher.yml")
    document = yaml.safe_load(bench.instance.read_text())
    document["name"] = "cost-fetcher"
    document["params"].update({"isFetch": True, "max_fetch": "10", "first_fetch_timestamp": "30 days"})
    fetcher.write_text(yaml.safe_dump(document, sort_keys=False))
    compileall.compile_file(str(PLUGIN), quiet=2)  # "with its bytecode cached": writes __pycache__ regardless
    python = clean_env(**NO_BYTECODE)
    kinds: dict[str, Callable[[], Measured]] = {
        "import requests": lambda: run_measured([sys.executable, "-c", "import requests"], env=python),
        "mde get-machine-details": lambda: bench.mde.run_measured(
            bench.instance, "microsoft-atp-get-machine-details", f"machine_id={machine_id}"),
        "mde fetch": lambda: bench.mde.run_measured(fetcher, "fetch"),
        "import the plugin": lambda: run_measured([sys.executable, "-c", "import MicrosoftDefenderForEndpoint"],
                                                  env=python),
    }
    samples: dict[str, list[Measured]] = {kind: [] for kind in kinds}

    def body(o: Outcome) -> None:
        for run in kinds.values():  # warm up: token, caches
            run()
        for _ in range(COST_ROUNDS):
            for kind, run in kinds.items():
                samples[kind].append(run())
        o.runs = COST_ROUNDS * len(kinds)
        o.failures = sum(m.returncode != 0 for ms in samples.values() for m in ms)

    outcome = bench.scenario(f"cost per run ({COST_ROUNDS} interleaved runs each, medians)", body)
    cpu = {kind: statistics.median(m.cpu_seconds for m in ms) for kind, ms in samples.items()}
    wall = {kind: statistics.median(m.wall_seconds for m in ms) for kind, ms in samples.items()}
    outcome.cpu_seconds = sum(m.cpu_seconds for ms in samples.values() for m in ms)
    for kind in kinds:
        outcome.notes.append(f"{kind}: {cpu[kind]:.3f} s CPU, {wall[kind]:.3f} s wall")
    base = cpu["import requests"]
    for kind, goal in (("mde get-machine-details", "cli_ratio"), ("mde fetch", "fetch_ratio"),
                       ("import the plugin", "import_ratio")):
        ratio = cpu[kind] / base
        outcome.check(f"{kind} <= {GOALS[goal]}x import requests (CPU)", f"{ratio:.2f}x", ratio <= GOALS[goal])
    outcome.check("zero failures", outcome.failures, outcome.failures == 0)
    return outcome


def entry_size_and_memory(bench: Bench, total: int) -> Outcome:
    """The plugin's entries for big listings, measured by lab.probe in its own process (its peak memory)."""
    probes: dict[str, tuple[Measured, dict]] = {}

    def probe(o: Outcome, label: str, *args: str) -> None:
        argv = [sys.executable, "-m", "lab.probe", "--state-dir", str(bench.mde.state_dir), "--instance",
                str(bench.instance), "microsoft-atp-get-machines", *args]
        result = run_measured(argv, env=clean_env(**bench.mde.env))
        o.runs += 1
        o.cpu_seconds += result.cpu_seconds
        o.failures += result.returncode != 0
        sizes = json.loads(result.stdout) if result.returncode == 0 else {}
        if result.returncode != 0 or sizes.get("errors"):
            o.notes.append((sizes.get("errors") or [result.stderr.strip()[-200:]])[0])
        probes[label] = (result, sizes)

    def body(o: Outcome) -> None:
        probe(o, "10k", "limit=10000")
        probe(o, "all", "all_results=true")

    outcome = bench.scenario(f"entries of big listings (10,000 and {total:,} machines)", body)
    for label, count in (("10k", 10_000), ("all", total)):
        result, sizes = probes[label]
        ids = sizes.get("ids", {}).get("MicrosoftATP.Machine", {})
        outcome.check(f"{count:,} machines in the entry's context", f"{ids.get('unique', 0):,} unique ids",
                      ids.get("unique") == ids.get("listed") == count)
        if label == "10k":
            size = sizes.get("entry_bytes", 0) / 1e6
            outcome.check(f"entry for 10,000 machines <= {GOALS['entry_mb_10k']:g} MB", f"{size:.1f} MB",
                          0 < size <= GOALS["entry_mb_10k"])
        outcome.check(f"peak memory listing {count:,} machines < {GOALS['peak_mib']:g} MiB",
                      f"{result.peak_mib:.0f} MiB ({sizes.get('peak_mib_before_serializing', 0):.0f} MiB before the "
                      "entry was serialized, as demisto.results does)", result.peak_mib < GOALS["peak_mib"])
        readable = sizes.get("human_readable_bytes", 0) / 1000
        outcome.check(f"human-readable for {count:,} machines <= {GOALS['readable_kb']:g} KB", f"{readable:.1f} KB",
                      0 < readable <= GOALS["readable_kb"])
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
            result = bench.run(o, "microsoft-atp-indicator-batch-update", f"indicator_batch={batch}",
                               options=("--json",))
            results = json.loads(result.stdout or "{}").get("MicrosoftATP.Indicators") or []
            created = sum(r["Outcome"] == "Created" for r in results)
            o.notes.append(f"{created} created, {sum(r['IsFailed'] for r in results)} failed")
            o.check(f"{count:,} outcomes, all created", f"{len(results):,} outcomes, {created:,} created",
                    len(results) == count == created)
        outcome = bench.scenario(f"import {count:,} indicators (batch-update)", body)
        stored = [i["indicatorValue"] for i in direct_api_get(emulator, "indicators",
                                                              {"$filter": "title eq 'bench'"})["value"]]
    calls = outcome.requests.get("POST /api/indicators/import", 0)
    duplicates = len(stored) - len(set(stored))
    outcome.notes.append(f"{calls} import calls, {outcome.requests.get('GET /api/indicators', 0)} listing call(s) "
                         "to tell creates from updates")
    outcome.check(f"import calls == {count // 500}", calls, calls == count // 500)
    outcome.check("zero failures", outcome.failures, outcome.failures == 0)
    outcome.check(f"no duplicates, {count:,} stored", f"{duplicates} duplicates, {len(stored):,} stored",
                  duplicates == 0 and len(stored) == count)
    return outcome


# ---- report ----------------------------------------------------------------------------------------------


def report(outcomes: list[Outcome]) -> bool:
    ok = True
    print(f"\n{'scenario':<58} {'runs':>5} {'fail':>5} {'tokens':>6} {'429s':>5} {'time':>8} {'CLI CPU':>8}  "
          "API requests")
    print("-" * 130)
    for o in outcomes:
        requests_text = ", ".join(f"{k} ×{v}" for k, v in sorted(o.requests.items()))
        print(f"{o.name:<58} {o.runs:>5} {o.failures:>5} {o.tokens:>6} {o.throttled:>5} {o.seconds:>7.1f}s "
              f"{o.cpu_seconds:>7.1f}s  {requests_text}")
        for note in o.notes:
            print(f"{'':<4}· {note}")
        for check in o.checks:
            ok &= check.passed
            print(f"{'':<4}{'PASS' if check.passed else 'FAIL'}  {check.label}: {check.measured}")
    failed = [f"{o.name}: {c.label}" for o in outcomes for c in o.checks if not c.passed]
    print(f"\n{'all checks passed' if ok else f'{len(failed)} check(s) FAILED:'}")
    for line in failed:
        print(f"  - {line}")
    return ok


def main() -> int:
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    outcomes = []
    with Emulator(machines=25_000, alerts=50, workdir=BENCH_DIR / "inventory",
                  extra_args=["--action-delay", "3"]) as emulator:
        bench = Bench(emulator, BENCH_DIR / "inventory")
        machine_ids = sample_machine_ids(emulator, 50)
        outcomes.append(separate_runs(bench, machine_ids[0]))
        outcomes.append(command_costs(bench, machine_ids[0]))
        outcomes.append(inventory_walk(bench, 25_000, rate_limited=False))
        outcomes.append(inventory_walk(bench, 25_000, rate_limited=True))
        outcomes.append(isolate_fifty(bench, machine_ids))
    with Emulator(machines=500, alerts=10_000, workdir=BENCH_DIR / "fetch") as emulator:
        bench = Bench(emulator, BENCH_DIR / "fetch", params={
            "max_fetch": "100", "first_fetch": "365 days", "fetch_status": "New,InProgress,Resolved",
            "fetch_severity": "Informational,Low,Medium,High"})
        outcomes.append(fetch_backlog(bench, 10_000, 100))
    with Emulator(machines=50_000, alerts=10, workdir=BENCH_DIR / "memory") as emulator:
        bench = Bench(emulator, BENCH_DIR / "memory")
        outcomes.append(entry_size_and_memory(bench, 50_000))
    outcomes.append(import_indicators(BENCH_DIR / "indicators"))
    return 0 if report(outcomes) else 1


def sample_machine_ids(emulator: Emulator, count: int) -> list[str]:
    """Windows machines (isolation works there)."""
    machines = direct_api_get(emulator, "machines", {"$filter": "startswith(osPlatform,'Windows')", "$top": count})
    return [m["id"] for m in machines["value"]]


if __name__ == "__main__":
    sys.exit(main())

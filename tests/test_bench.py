"""The bench's checks fail when the outcome is wrong (the bench itself runs in `make bench`, not here)."""

import json

from lab import bench
from lab.runner import Measured


class FakeBench:
    """Fetch runs that each return 100 copies of one incident; then one run fails, and the backlog is empty."""

    def __init__(self, runs: int):
        self.runs_left = runs

    def scenario(self, name, body):
        outcome = bench.Outcome(name)
        body(outcome)
        return outcome

    def run(self, outcome, command, *args, options=()):
        outcome.runs += 1
        self.runs_left -= 1
        if self.runs_left == 0:
            outcome.failures += 1
            return Measured([], 1, "", "error: boom", 0.1, 0.1, 50)
        if self.runs_left < 0:
            return Measured([], 0, "[]", "", 0.1, 0.1, 50)
        incidents = [{"name": "same", "rawJSON": json.dumps({"id": "da1"})}] * 100
        return Measured([], 0, json.dumps(incidents), "", 0.1, 0.1, 50)


def test_fetch_checks_fail_on_duplicates_and_failed_runs():
    outcome = bench.fetch_backlog(FakeBench(runs=101), backlog=10_000, max_fetch=100)
    failed = {check.label: check.measured for check in outcome.checks if not check.passed}
    assert failed == {"unique alert ids fetched == 10,000": "1", "no incident fetched twice": "9,999 duplicates",
                      "failed fetch runs == 0": "1", "runs <= 101": "102"}


def test_counters_are_taken_relative_to_the_baseline():
    before = {"requests": {"GET /api/machines": 98}, "responses": {"200": 98}}
    after = {"requests": {"GET /api/machines": 102}, "responses": {"200": 101, "429": 1}}
    assert bench.counter_difference(after, before) == {"requests": {"GET /api/machines": 4},
                                                        "responses": {"200": 3, "429": 1}}

"""End to end: `mde fetch` run repeatedly against the emulator's moving alert stream."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fetch_instance(lab):
    """The client-credentials instance with fetch settings that take every alert."""
    source = yaml.safe_load(lab.instances["client-credentials"].read_text())
    source["name"] = "fetcher"
    source["params"].update({"isFetch": True, "max_fetch": "7", "first_fetch": "2 minutes",
                             "fetch_status": "New,InProgress,Resolved",
                             "fetch_severity": "Informational,Low,Medium,High", "fetch_lookback_minutes": "5"})
    path = lab.instances["client-credentials"].parent / "fetcher.yml"
    path.write_text(yaml.safe_dump(source, sort_keys=False))
    return path


def fetch(lab, instance) -> list[dict]:
    result = lab.mde.run(instance, "fetch", options=("--json",))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


def generate(lab, **body) -> list[str]:
    return lab.emulator.admin("POST", "alerts/generate", body)["ids"]


def test_repeated_fetch_takes_every_new_alert_exactly_once(lab, fetch_instance):
    fetch(lab, fetch_instance)  # starts the cursor at "now - 2 minutes"
    generated: list[str] = []
    fetched: list[str] = []
    waves = [dict(count=5), dict(count=12, same_timestamp=True), dict(count=3, created_offset_seconds=-60),
             dict(count=9, same_timestamp=True), dict(count=4)]
    for wave in waves:
        generated += generate(lab, **wave)
        for _ in range(3):  # fewer fetches than needed for the burst: the rest must come next time
            fetched += [json.loads(i["rawJSON"])["id"] for i in fetch(lab, fetch_instance)]
    for _ in range(10):
        batch = fetch(lab, fetch_instance)
        if not batch:
            break
        fetched += [json.loads(i["rawJSON"])["id"] for i in batch]

    duplicates = [alert_id for alert_id, n in Counter(fetched).items() if n > 1]
    assert duplicates == []
    assert set(generated) <= set(fetched), f"missed: {sorted(set(generated) - set(fetched))}"


def test_incidents_carry_the_originals_name_severity_and_mirror_id(lab, fetch_instance):
    generate(lab, count=1, severity="High")
    incidents = fetch(lab, fetch_instance)
    assert incidents
    incident = incidents[-1]
    alert = json.loads(incident["rawJSON"])
    assert incident["name"] == f"Microsoft Defender ATP Alert {alert['id']}" and incident["details"] == alert["title"]
    assert incident["dbotMirrorId"] == alert["id"]
    assert incident["occurred"].startswith(alert["alertCreationTime"][:19])

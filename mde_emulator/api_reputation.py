"""Defender API: prevalence statistics of files, IP addresses and domains (`/stats?lookBackHours=`).

Organisation prevalence counts the distinct machines whose alert evidence shows the entity within the look-back
window, so the numbers agree with the alerts and machines the
other endpoints serve. `GET /api/files/{sha}` itself is served by api_alerts.
"""

from __future__ import annotations

import datetime as dt

from .common import DOMAIN_RE, SHA1_RE, check_ip
from .odata import parse_datetime
from .web import ApiError, Request, Response, Route, entity, not_found

MAX_LOOK_BACK_HOURS = 720
SHA256_LENGTH = 64


def _look_back_start(request: Request) -> dt.datetime:
    raw = next((v for k, v in request.query.items() if k.lower() == "lookbackhours"), None)
    hours = MAX_LOOK_BACK_HOURS
    if raw is not None:
        try:
            hours = int(raw)
        except ValueError:
            hours = 0
        if not 1 <= hours <= MAX_LOOK_BACK_HOURS:
            raise ApiError(400, "InvalidInput", f"lookBackHours must be an integer from 1 to {MAX_LOOK_BACK_HOURS}.")
    return request.emu.clock.utcnow() - dt.timedelta(hours=hours)


def _sightings(request: Request, match) -> tuple[set[str], list[str]]:
    """Machines and evidence times (ISO strings) of the evidence matching `match` inside the window."""
    store = request.emu.store
    start = _look_back_start(request)
    machines, times = set(), []
    for alert in list(store.alerts):
        for ev in store.evidence.get(alert["id"], ()):
            if match(ev) and parse_datetime(ev["evidenceCreationTime"])[0] >= start:
                machines.add(alert["machineId"])
                times.append(ev["evidenceCreationTime"])
    return machines, sorted(times)


def _org_stats(machines: set[str], times: list[str]) -> dict:
    return {"organizationPrevalence": len(machines), "orgFirstSeen": times[0] if times else None,
            "orgLastSeen": times[-1] if times else None}


def file_stats(request: Request) -> Response:
    key = request.params["sha"].lower()
    if not (SHA1_RE.match(key) or (len(key) == SHA256_LENGTH and all(c in "0123456789abcdef" for c in key))):
        raise ApiError(400, "InvalidHashValue", f"'{request.params['sha']}' is not a valid SHA-1 or SHA-256 hash.")
    files = request.emu.store.files
    record = files.get(key) or next((f for f in list(files.values()) if f["sha256"] == key), None)
    if record is None:
        raise not_found("File", request.params["sha"])
    machines, times = _sightings(request, lambda e: e["sha1"] == record["sha1"])
    return entity(request, "microsoft.windowsDefenderATP.api.InOrgFileStats", {
        "sha1": record["sha1"], **_org_stats(machines, times), "globallyPrevalence": record["globalPrevalence"],
        "globalFirstObserved": record["globalFirstObserved"], "globalLastObserved": record["globalLastObserved"],
        "topFileNames": [record["fileName"]]})


def ip_stats(request: Request) -> Response:
    ip = check_ip(request.params["ip"])
    machines, times = _sightings(request, lambda e: e["ipAddress"] == ip)
    return entity(request, "microsoft.windowsDefenderATP.api.InOrgIPStats",
                  {"ipAddress": ip, **_org_stats(machines, times)})


def domain_stats(request: Request) -> Response:
    domain = request.params["domain"].lower()
    if not DOMAIN_RE.match(domain):
        raise ApiError(400, "InvalidDomainName", f"'{request.params['domain']}' is not a valid domain name.")
    machines, times = _sightings(request, lambda e: (e["url"] or "").lower() == domain)
    return entity(request, "microsoft.windowsDefenderATP.api.InOrgDomainStats",
                  {"host": domain, **_org_stats(machines, times)})


ROUTES = [
    Route("GET", "/api/files/{sha}/stats", file_stats, "files", ("File.Read.All",)),
    Route("GET", "/api/ips/{ip}/stats", ip_stats, "ips", ("Ip.Read.All",)),
    Route("GET", "/api/domains/{domain}/stats", domain_stats, "domains", ("URL.Read.All",)),
]

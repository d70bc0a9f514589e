"""Defender API: vulnerability management (software inventory, vulnerabilities, missing KBs, security
recommendations, exposure score, remediation tasks). Data comes from `tvm_data`, derived from the Store's machines.

Quota: Microsoft allows 50 calls a minute on a machine's vulnerabilities. The routes that list machine
vulnerabilities share the rate-limit family `machine-vulnerabilities`, so the fault switch
`{"rate_limit_per_minute": 50, "rate_limit_families": ["machine-vulnerabilities"]}` turns that quota on.
"""

from __future__ import annotations

from .api_machines import get_machine
from .odata import DATETIME, STR, Schema, format_datetime
from .tvm_data import MACHINE_VULN_FIELDS, MachineVuln, TvmData, tvm_of
from .web import Request, Response, Route, entity, not_found, serve_collection

SOFTWARE_READ = ("Software.Read.All",)
VULNERABILITY_READ = ("Vulnerability.Read.All",)
RECOMMENDATION_READ = ("SecurityRecommendation.Read.All",)
SCORE_READ = ("Score.Read.All",)
REMEDIATION_READ = ("RemediationTasks.Read.All", "RemediationTask.Read.All")
FLOAT = "float"
MACHINE_VULN_FAMILY = "machine-vulnerabilities"
VULNERABILITIES_MAX_TOP = 8000

SOFTWARE = Schema("Software", ("id", "name", "vendor", "weaknesses", "publicExploit", "activeAlert", "exposedMachines",
                               "installedMachines", "impactScore", "isNormalized", "category"),
                  filterable={"id": STR, "name": STR, "vendor": STR})
VULNERABILITY_FIELDS = ("id", "name", "description", "severity", "cvssV3", "cvssVector", "exposedMachines",
                        "publishedOn", "updatedOn", "firstDetected", "publicExploit", "exploitVerified", "exploitInKit",
                        "exploitTypes", "exploitUris", "cveSupportability", "tags", "epss")
VULNERABILITIES = Schema("Vulnerabilities", VULNERABILITY_FIELDS,
                         filterable={"id": STR, "name": STR, "description": STR, "cvssV3": FLOAT,
                                     "publishedOn": DATETIME, "severity": STR, "updatedOn": DATETIME},
                         max_top=VULNERABILITIES_MAX_TOP)
MACHINE_VULNERABILITIES = Schema("MachineVulnerabilities", MACHINE_VULN_FIELDS,
                                 filterable={name: STR for name in MACHINE_VULN_FIELDS})
MACHINE_REFERENCES = Schema("MachineReferences", ("id", "computerDnsName", "osPlatform", "rbacGroupName",
                                                  "rbacGroupId"),
                            filterable={"id": STR, "computerDnsName": STR, "osPlatform": STR, "rbacGroupName": STR})
DISTRIBUTIONS = Schema("SoftwareVersions", ("version", "installations", "vulnerabilities"), filterable={})
PRODUCT_FIXES = Schema("ProductFixes", ("id", "name", "osBuild", "productsNames", "url", "machineMissedOn",
                                        "cveAddressed"), filterable={"id": STR, "name": STR})
RECOMMENDATIONS = Schema(
    "Recommendations",
    ("id", "productName", "recommendationName", "weaknesses", "vendor", "recommendedVersion", "recommendedProgram",
     "recommendedVendor", "recommendationCategory", "subCategory", "severityScore", "publicExploit", "activeAlert",
     "associatedThreats", "remediationType", "status", "configScoreImpact", "exposureImpact", "totalMachineCount",
     "exposedMachinesCount", "nonProductivityImpactedAssets", "relatedComponent", "exposedCriticalDevices"),
    filterable={"id": STR, "productName": STR, "vendor": STR, "recommendedVersion": STR,
                "recommendationCategory": STR, "subCategory": STR, "severityScore": FLOAT, "remediationType": STR,
                "recommendedProgram": STR, "recommendedVendor": STR, "status": STR},
)
REMEDIATION_TASKS = Schema(
    "RemediationTasks",
    ("id", "title", "createdOn", "requesterId", "requesterEmail", "status", "statusLastModifiedOn", "description",
     "relatedComponent", "targetDevices", "rbacGroupNames", "fixedDevices", "requesterNotes", "dueOn", "category",
     "productivityImpactRemediationType", "priority", "completionMethod", "completerId", "completerEmail", "scid",
     "type", "productId", "vendorId", "nameId", "recommendedVersion", "recommendedVendor", "recommendedProgram"),
    filterable={"createdOn": DATETIME, "status": STR},
)
EXPOSURE_SCORES = Schema("ExposureScore", ("time", "score", "rbacGroupName", "rbacGroupId"),
                         filterable={"rbacGroupName": STR})


def _tvm(request: Request) -> TvmData:
    return tvm_of(request.emu.store)


def _now(request: Request) -> str:
    return format_datetime(request.emu.clock.utcnow())


def _lookup(table: dict, key: str, entity_name: str):
    """A record by its case-insensitive key (tables are keyed in one case), or the service's 404."""
    record = table.get(key.upper() if entity_name == "Vulnerability" else key.lower())
    if record is None:
        raise not_found(entity_name, key)
    return record


def machine_reference(machine: dict) -> dict:
    return {k: machine[k] for k in ("id", "computerDnsName", "osPlatform", "rbacGroupName", "rbacGroupId")}


def _references(request: Request, machines: list[dict]) -> Response:
    unique = list({m["id"]: m for m in machines}.values())
    return serve_collection(request, [machine_reference(m) for m in unique], MACHINE_REFERENCES)


# -- software ----------------------------------------------------------------------------------------------------
def _software(request: Request):
    tvm = _tvm(request)
    return tvm, _lookup(tvm.products_by_id, request.params["id"], "Software")


def list_software(request: Request) -> Response:
    return serve_collection(request, _tvm(request).software, SOFTWARE)


def software_by_id(request: Request) -> Response:
    tvm, product = _software(request)
    return entity(request, "Software", tvm.software_by_id[product.id])


def software_distributions(request: Request) -> Response:
    tvm, product = _software(request)
    return serve_collection(request, tvm.distributions(product), DISTRIBUTIONS)


def software_machines(request: Request) -> Response:
    tvm, product = _software(request)
    return _references(request, [m for m, _ in tvm.machines_with(product)])


def software_vulnerabilities(request: Request) -> Response:
    _, product = _software(request)
    return serve_collection(request, [c for per_version in product.cves for c in per_version], VULNERABILITIES)


def software_missing_kbs(request: Request) -> Response:
    tvm, product = _software(request)
    return serve_collection(request, tvm.missing_kbs([(product, v) for _, v in tvm.machines_with(product)]),
                            PRODUCT_FIXES)


# -- vulnerabilities ---------------------------------------------------------------------------------------------
def _vulnerability(request: Request) -> dict:
    return _lookup(_tvm(request).vulnerabilities_by_id, request.params["cve"], "Vulnerability")


def list_vulnerabilities(request: Request) -> Response:
    return serve_collection(request, _tvm(request).vulnerabilities, VULNERABILITIES)


def vulnerability_by_id(request: Request) -> Response:
    return entity(request, "Vulnerabilities", _vulnerability(request))


def vulnerability_machines(request: Request) -> Response:
    cve = _vulnerability(request)
    return _references(request, _tvm(request).machines_by_cve.get(cve["id"], []))


def _serve_machine_vulns(request: Request, rows: list[MachineVuln]) -> Response:
    return serve_collection(request, rows, MACHINE_VULNERABILITIES, lambda row, _opts: row.record())


def machines_vulnerabilities(request: Request) -> Response:
    return _serve_machine_vulns(request, _tvm(request).machine_vulns)


# -- one machine ---------------------------------------------------------------------------------------------------
def machine_software(request: Request) -> Response:
    tvm = _tvm(request)
    machine = get_machine(request)
    return serve_collection(request, [tvm.software_by_id[p.id] for p, _ in tvm.installs[machine["id"]]], SOFTWARE)


def machine_missing_kbs(request: Request) -> Response:
    tvm = _tvm(request)
    machine = get_machine(request)
    return serve_collection(request, tvm.missing_kbs(tvm.installs[machine["id"]]), PRODUCT_FIXES)


def machine_vulnerabilities(request: Request) -> Response:
    tvm = _tvm(request)
    machine = get_machine(request)
    cves = list({row.cve["id"]: row.cve for row in tvm.vulns_by_machine[machine["id"]]}.values())
    return serve_collection(request, cves, VULNERABILITIES,
                            lambda cve, _opts: {**cve, "firstDetected": tvm.first_detected_on(machine["id"], cve)})


def machine_recommendations(request: Request) -> Response:
    tvm = _tvm(request)
    machine = get_machine(request)
    found = [r for r in tvm.recommendations if any(m is machine for m in tvm.recommendation_machines(r))]
    return serve_collection(request, found, RECOMMENDATIONS)


# -- recommendations, score, remediation -------------------------------------------------------------------------
def _recommendation(request: Request) -> dict:
    return _lookup(_tvm(request).recommendations_by_id, request.params["id"], "Recommendation")


def list_recommendations(request: Request) -> Response:
    return serve_collection(request, _tvm(request).recommendations, RECOMMENDATIONS)


def recommendation_by_id(request: Request) -> Response:
    return entity(request, "Recommendations", _recommendation(request))


def recommendation_software(request: Request) -> Response:
    rec = _recommendation(request)
    tvm = _tvm(request)
    software = [tvm.software_by_id[rec["id"][len("va-_-"):]]] if rec["id"].startswith("va-_-") else []
    return serve_collection(request, software, SOFTWARE)


def recommendation_machines(request: Request) -> Response:
    return _references(request, _tvm(request).recommendation_machines(_recommendation(request)))


def recommendation_vulnerabilities(request: Request) -> Response:
    return serve_collection(request, _tvm(request).recommendation_vulnerabilities(_recommendation(request)),
                            VULNERABILITIES)


def exposure_score(request: Request) -> Response:
    tvm = _tvm(request)
    return entity(request, "ExposureScore", {"time": _now(request), "score": tvm.exposure_score(tvm.machines)})


def exposure_score_by_groups(request: Request) -> Response:
    tvm = _tvm(request)
    groups: dict[tuple[int, str], list[dict]] = {}
    for machine in tvm.machines:
        groups.setdefault((machine["rbacGroupId"], machine["rbacGroupName"]), []).append(machine)
    now = _now(request)
    rows = [{"time": now, "score": tvm.exposure_score(members), "rbacGroupName": name, "rbacGroupId": gid}
            for (gid, name), members in sorted(groups.items())]
    return serve_collection(request, rows, EXPOSURE_SCORES)


def configuration_score(request: Request) -> Response:
    tvm = _tvm(request)
    fixed = sum(1 for r in tvm.recommendations if r["recommendationCategory"] == "SecurityControls"
                and r["status"] == "Active")
    return entity(request, "ConfigurationScore", {"time": _now(request), "score": 1000.0 - 80.0 * fixed})


def _remediation_task(request: Request) -> dict:
    return _lookup(_tvm(request).remediation_tasks_by_id, request.params["id"], "RemediationTask")


def list_remediation_tasks(request: Request) -> Response:
    return serve_collection(request, _tvm(request).remediation_tasks, REMEDIATION_TASKS)


def remediation_task_by_id(request: Request) -> Response:
    return entity(request, "RemediationTasks", _remediation_task(request))


def remediation_task_machines(request: Request) -> Response:
    return _references(request, _tvm(request).remediation_machines(_remediation_task(request)))


ROUTES = [
    Route("GET", "/api/Software", list_software, "software", SOFTWARE_READ),
    Route("GET", "/api/Software/{id}", software_by_id, "software", SOFTWARE_READ),
    Route("GET", "/api/Software/{id}/distributions", software_distributions, "software", SOFTWARE_READ),
    Route("GET", "/api/Software/{id}/machineReferences", software_machines, "software", SOFTWARE_READ),
    Route("GET", "/api/Software/{id}/vulnerabilities", software_vulnerabilities, "software", VULNERABILITY_READ),
    Route("GET", "/api/Software/{id}/getmissingkbs", software_missing_kbs, "software", SOFTWARE_READ),
    Route("GET", "/api/Vulnerabilities", list_vulnerabilities, "vulnerabilities", VULNERABILITY_READ),
    Route("GET", "/api/Vulnerabilities/machinesVulnerabilities", machines_vulnerabilities, MACHINE_VULN_FAMILY,
          VULNERABILITY_READ),
    Route("GET", "/api/Vulnerabilities/{cve}", vulnerability_by_id, "vulnerabilities", VULNERABILITY_READ),
    Route("GET", "/api/Vulnerabilities/{cve}/machineReferences", vulnerability_machines, "vulnerabilities",
          VULNERABILITY_READ),
    Route("GET", "/api/machines/{id}/software", machine_software, "software", SOFTWARE_READ),
    Route("GET", "/api/machines/{id}/getmissingkbs", machine_missing_kbs, "software", SOFTWARE_READ),
    Route("GET", "/api/machines/{id}/vulnerabilities", machine_vulnerabilities, MACHINE_VULN_FAMILY,
          VULNERABILITY_READ),
    Route("GET", "/api/machines/{id}/recommendations", machine_recommendations, "recommendations",
          RECOMMENDATION_READ),
    Route("GET", "/api/recommendations", list_recommendations, "recommendations", RECOMMENDATION_READ),
    Route("GET", "/api/recommendations/{id}", recommendation_by_id, "recommendations", RECOMMENDATION_READ),
    Route("GET", "/api/recommendations/{id}/software", recommendation_software, "recommendations",
          RECOMMENDATION_READ),
    Route("GET", "/api/recommendations/{id}/machineReferences", recommendation_machines, "recommendations",
          RECOMMENDATION_READ),
    Route("GET", "/api/recommendations/{id}/vulnerabilities", recommendation_vulnerabilities, "recommendations",
          RECOMMENDATION_READ),
    Route("GET", "/api/exposureScore", exposure_score, "score", SCORE_READ),
    Route("GET", "/api/exposureScore/ByMachineGroups", exposure_score_by_groups, "score", SCORE_READ),
    Route("GET", "/api/configurationScore", configuration_score, "score", SCORE_READ),
    Route("GET", "/api/remediationTasks", list_remediation_tasks, "remediation", REMEDIATION_READ),
    Route("GET", "/api/remediationTasks/{id}", remediation_task_by_id, "remediation", REMEDIATION_READ),
    Route("GET", "/api/remediationTasks/{id}/machineReferences", remediation_task_machines, "remediation",
          REMEDIATION_READ),
]

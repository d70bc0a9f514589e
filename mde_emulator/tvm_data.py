"""Vulnerability-management data derived from the Store's machines: installed software, CVEs, missing KBs,
security recommendations, exposure scores and remediation tasks.

Everything is a function of (seed, machines): each machine's installs come from a generator seeded by its id,
so "machines with this CVE" and "CVEs on this machine" are two views of one install table. A product's CVEs
are each fixed in one of its versions; a machine running an older version is exposed to every CVE fixed
later. The vulnerability catalogue also holds CVEs no machine has, as Microsoft's does, so `/vulnerabilities`
spans more than one 8,000-row page. Built on first use (most emulator runs never ask for it).
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
import weakref
from dataclasses import dataclass, field

from .odata import format_datetime

CATALOGUE_SIZE = 8500  # CVEs in /vulnerabilities, exposed or not: more than one 8,000-row page
REMEDIATION_TASKS = 8

# (vendor, product, category, versions oldest first, platforms it is installed on, install probability)
PRODUCTS = [
    ("microsoft", "windows_10", "OS", ["10.0.19044.3086", "10.0.19045.3693", "10.0.19045.4529"], ("Windows10",), 1.0),
    ("microsoft", "windows_11", "OS", ["10.0.22621.2428", "10.0.22631.3737", "10.0.26100.2314"], ("Windows11",), 1.0),
    ("microsoft", "windows_server_2019", "OS", ["10.0.17763.5122", "10.0.17763.5936"], ("WindowsServer2019",), 1.0),
    ("microsoft", "windows_server_2022", "OS", ["10.0.20348.2113", "10.0.20348.2527"], ("WindowsServer2022",), 1.0),
    ("linux", "linux_kernel", "OS", ["5.15.0", "6.5.0", "6.8.0"], ("Linux",), 1.0),
    ("apple", "macos", "OS", ["14.5", "15.0", "15.1"], ("macOS",), 1.0),
    ("microsoft", "edge_chromium-based", "Application", ["124.0.2478.80", "126.0.2592.87", "130.0.2849.68"],
     ("Windows10", "Windows11", "WindowsServer2019", "WindowsServer2022", "macOS"), 0.9),
    ("google", "chrome", "Application", ["122.0.6261.129", "125.0.6422.142", "131.0.6778.86"],
     ("Windows10", "Windows11", "macOS", "Linux"), 0.6),
    ("mozilla", "firefox", "Application", ["115.9.1", "126.0.1", "132.0.2"], ("Windows10", "Windows11", "macOS", "Linux"),
     0.3),
    ("microsoft", "office", "Application", ["16.0.16731.20636", "16.0.17328.20452", "16.0.18129.20158"],
     ("Windows10", "Windows11", "macOS"), 0.8),
    ("adobe", "acrobat_reader_dc", "Application", ["23.008.20470", "24.002.20759", "24.004.20220"],
     ("Windows10", "Windows11", "macOS"), 0.5),
    ("oracle", "jre", "Application", ["1.8.0_381", "1.8.0_411", "1.8.0_431"],
     ("Windows10", "Windows11", "WindowsServer2019", "WindowsServer2022", "Linux"), 0.25),
    ("7-zip", "7-zip", "Application", ["22.01", "23.01", "24.08"], ("Windows10", "Windows11", "WindowsServer2022"), 0.4),
    ("notepad-plus-plus", "notepad++", "Application", ["8.5.8", "8.6.4", "8.7.1"], ("Windows10", "Windows11"), 0.3),
    ("zoom", "zoom", "Application", ["5.16.10", "6.0.11", "6.2.10"], ("Windows10", "Windows11", "macOS"), 0.4),
    ("vmware", "tools", "Application", ["12.1.5", "12.3.5", "12.4.5"], ("WindowsServer2019", "WindowsServer2022"), 0.6),
    ("openssl", "openssl", "Application", ["1.1.1w", "3.0.13", "3.0.15"], ("Linux", "WindowsServer2022", "macOS"), 0.7),
    ("openbsd", "openssh", "Application", ["8.9p1", "9.3p1", "9.8p1"], ("Linux", "macOS"), 0.9),
    ("python", "python", "Application", ["3.10.11", "3.11.8", "3.12.7"], ("Linux", "macOS", "Windows11"), 0.35),
    ("apache", "log4j", "Application", ["2.14.1", "2.17.1", "2.24.1"], ("Linux", "WindowsServer2019"), 0.2),
    ("git-scm", "git", "Application", ["2.40.1", "2.44.0", "2.47.0"], ("Windows10", "Windows11", "Linux", "macOS"), 0.3),
    ("putty", "putty", "Application", ["0.79", "0.80", "0.81"], ("Windows10", "Windows11", "WindowsServer2022"), 0.2),
]
KB_PRODUCTS = {"windows_10", "windows_11", "windows_server_2019", "windows_server_2022", "office"}
FLAWS = ["Remote code execution", "Elevation of privilege", "Information disclosure", "Security feature bypass",
         "Denial of service", "Spoofing", "Memory corruption", "Use-after-free", "Heap buffer overflow",
         "Out-of-bounds read"]
OTHER_PRODUCTS = ["Contoso Web Server", "Fabrikam CMS", "Northwind ERP", "Tailspin Mail", "Adatum VPN client",
                  "Litware Router firmware", "Wingtip Media Player", "Proseware PDF toolkit"]
EXPLOIT_TYPES = ["Remote code execution", "Privilege escalation", "Denial of service", "Local"]
TAGS = ["ZeroDay", "NoSecurityUpdate", "EndOfSupport"]
SCA_RECOMMENDATIONS = [  # (scid, name, platforms)
    ("scid-2010", "Turn on Microsoft Defender Antivirus PUA protection in block mode",
     ("Windows10", "Windows11", "WindowsServer2019", "WindowsServer2022")),
    ("scid-91", "Set 'Minimum password length' to '14 or more characters'", ("Windows10", "Windows11")),
    ("scid-2090", "Disable 'Allow Basic authentication' for WinRM Client", ("WindowsServer2019", "WindowsServer2022")),
]


def severity_of(cvss: float) -> str:
    if cvss >= 9.0:
        return "Critical"
    if cvss >= 7.0:
        return "High"
    if cvss >= 4.0:
        return "Medium"
    return "Low"


@dataclass
class Product:
    vendor: str
    name: str
    category: str
    versions: list[str]
    cves: list[list[dict]] = field(default_factory=list)  # per version index: the CVEs fixed in that version
    kbs: list[dict | None] = field(default_factory=list)  # per version index: the KB that brings it

    @property
    def id(self) -> str:
        return f"{self.vendor}-_-{self.name}"

    def open_cves(self, version: int) -> list[dict]:
        """CVEs a machine on `version` is exposed to: every one fixed in a later version."""
        return [cve for later in range(version + 1, len(self.versions)) for cve in self.cves[later]]


class MachineVuln:
    """One row of /vulnerabilities/machinesVulnerabilities, kept small: 100,000s of them exist at scale."""

    __slots__ = ("machine", "cve", "product", "version", "kb")

    def __init__(self, machine: dict, cve: dict, product: Product, version: int, kb: dict | None):
        self.machine, self.cve, self.product, self.version, self.kb = machine, cve, product, version, kb

    def get(self, name: str, default=None):
        if name == "id":
            return (f"{self.machine['id']}-_-{self.cve['id']}-_-{self.product.vendor}-_-{self.product.name}-_-"
                    f"{self.product.versions[self.version]}-_-{self.kb['id'] if self.kb else ''}")
        if name == "cveId":
            return self.cve["id"]
        if name == "machineId":
            return self.machine["id"]
        if name == "fixingKbId":
            return self.kb["id"] if self.kb else None
        if name == "productName":
            return self.product.name
        if name == "productVendor":
            return self.product.vendor
        if name == "productVersion":
            return self.product.versions[self.version]
        if name == "severity":
            return self.cve["severity"]
        return default

    def record(self) -> dict:
        return {name: self.get(name) for name in MACHINE_VULN_FIELDS}


MACHINE_VULN_FIELDS = ("id", "cveId", "machineId", "fixingKbId", "productName", "productVendor", "productVersion",
                       "severity")


class TvmData:
    """All vulnerability-management views of one Store."""

    def __init__(self, machines: list[dict], seed: int, now: dt.datetime):
        self.now = now
        self.rng = random.Random(f"tvm-{seed}")  # its own stream: the Store's seeded data stays as it was
        self.machines = machines
        self.products = [Product(v, n, c, list(vs)) for v, n, c, vs, _, _ in PRODUCTS]
        self.products_by_id = {p.id: p for p in self.products}
        self.vulnerabilities: list[dict] = []
        self.vulnerabilities_by_id: dict[str, dict] = {}
        self._next_cve = 20000
        self._seed_product_cves()
        self.installs: dict[str, list[tuple[Product, int]]] = {m["id"]: self._installs(m, seed) for m in machines}
        self.machine_vulns: list[MachineVuln] = []
        self.vulns_by_machine: dict[str, list[MachineVuln]] = {}
        self.machines_by_cve: dict[str, list[dict]] = {}
        self.first_detected: dict[tuple[str, str], str] = {}
        self._index_exposure()
        self._fill_catalogue()
        self.software = [self._software_record(p) for p in self.products]
        self.software_by_id = {s["id"]: s for s in self.software}
        self.recommendations = self._recommendations()
        self.recommendations_by_id = {r["id"]: r for r in self.recommendations}
        self.remediation_tasks = self._remediation_tasks()
        self.remediation_tasks_by_id = {t["id"]: t for t in self.remediation_tasks}

    # -- CVEs --------------------------------------------------------------------------------------------------
    def _new_cve(self, product_label: str, published_days_ago: float) -> dict:
        rng = self.rng
        self._next_cve += rng.randrange(1, 40)
        published = self.now - dt.timedelta(days=published_days_ago)
        year = published.year
        cvss = round(rng.choice([rng.uniform(2.0, 6.9), rng.uniform(5.0, 8.9), rng.uniform(7.0, 10.0)]), 1)
        public = rng.random() < 0.3
        verified = public and rng.random() < 0.5
        in_kit = verified and rng.random() < 0.3
        flaw = rng.choice(FLAWS)
        record = {
            "id": f"CVE-{year}-{self._next_cve}",
            "name": f"CVE-{year}-{self._next_cve}",
            "description": f"{flaw} vulnerability in {product_label}.",
            "severity": severity_of(cvss),
            "cvssV3": cvss,
            "cvssVector": f"CVSS:3.1/AV:{rng.choice('NALP')}/AC:{rng.choice('LH')}/PR:{rng.choice('NLH')}/"
                          f"UI:{rng.choice('NR')}/S:U/C:H/I:{rng.choice('NLH')}/A:{rng.choice('NLH')}",
            "exposedMachines": 0,
            "publishedOn": format_datetime(published.replace(hour=0, minute=0, second=0, microsecond=0)),
            "updatedOn": format_datetime(published + dt.timedelta(days=rng.uniform(0, 60))),
            "publicExploit": public,
            "exploitVerified": verified,
            "exploitInKit": in_kit,
            "exploitTypes": [rng.choice(EXPLOIT_TYPES)] if public else [],
            "exploitUris": [f"https://exploits.example/{year}/{self._next_cve}"] if public else [],
            "cveSupportability": "Supported",
            "tags": [rng.choice(TAGS)] if rng.random() < 0.05 else [],
            "epss": round(rng.random() ** 4, 5),
        }
        self.vulnerabilities.append(record)
        self.vulnerabilities_by_id[record["id"].upper()] = record
        return record

    def _seed_product_cves(self) -> None:
        rng = self.rng
        kb_number = 5030000
        for product in self.products:
            label = f"{product.vendor} {product.name}".replace("_", " ")
            product.cves = [[] for _ in product.versions]
            product.kbs = [None for _ in product.versions]
            for later in range(1, len(product.versions)):
                age = 400 * (len(product.versions) - later) + rng.uniform(0, 200)
                product.cves[later] = [self._new_cve(label, age - rng.uniform(0, 150))
                                       for _ in range(rng.randrange(2, 7))]
                if product.name in KB_PRODUCTS:
                    kb_number += rng.randrange(100, 900)
                    released = self.now - dt.timedelta(days=age)
                    product.kbs[later] = {"id": str(kb_number), "name": f"{released:%B %Y} Security Updates",
                                          "osBuild": None, "productsNames": [product.name],
                                          "url": f"https://catalog.update.microsoft.com/v7/site/Search.aspx?q=KB"
                                                 f"{kb_number}"}

    def _fill_catalogue(self) -> None:
        while len(self.vulnerabilities) < CATALOGUE_SIZE:
            self._new_cve(self.rng.choice(OTHER_PRODUCTS), self.rng.uniform(1, 2500))
        self.vulnerabilities.sort(key=lambda v: v["id"])

    # -- installs and exposure ---------------------------------------------------------------------------------
    @staticmethod
    def _installs(machine: dict, seed: int) -> list[tuple[Product, int]]:
        rng = random.Random(f"{seed}-{machine['id']}")
        out = []
        for index, (_, _, _, versions, platforms, chance) in enumerate(PRODUCTS):
            if machine["osPlatform"] in platforms and rng.random() < chance:
                version = min(len(versions) - 1, int(rng.random() ** 0.6 * len(versions)))  # most are current
                out.append((index, version))
        return out

    def _index_exposure(self) -> None:
        for machine in self.machines:
            rows = []
            for index, version in self.installs[machine["id"]]:
                product = self.products[index]
                for later in range(version + 1, len(product.versions)):
                    for cve in product.cves[later]:
                        rows.append(MachineVuln(machine, cve, product, version, product.kbs[later]))
                        self.machines_by_cve.setdefault(cve["id"], []).append(machine)
                        cve["exposedMachines"] += 1
            self.vulns_by_machine[machine["id"]] = rows
            self.machine_vulns.extend(rows)
        self.installs = {mid: [(self.products[i], v) for i, v in pairs] for mid, pairs in self.installs.items()}

    def first_detected_on(self, machine_id: str, cve: dict) -> str:
        """When the machine was first seen exposed: after publication, stable for the pair."""
        rng = random.Random(f"{machine_id}-{cve['id']}")
        published = dt.datetime.fromisoformat(cve["publishedOn"].replace("0Z", "+00:00"))
        span = max(1.0, (self.now - published).total_seconds())
        return format_datetime(published + dt.timedelta(seconds=span * rng.random()))

    def machines_with(self, product: Product) -> list[tuple[dict, int]]:
        return [(m, v) for m in self.machines for p, v in self.installs[m["id"]] if p is product]

    def _software_record(self, product: Product) -> dict:
        installs = self.machines_with(product)
        exposed = [m for m, v in installs if product.open_cves(v)]
        cves = [c for per_version in product.cves for c in per_version]
        return {
            "id": product.id, "name": product.name, "vendor": product.vendor,
            "weaknesses": len(cves),
            "publicExploit": any(c["publicExploit"] for c in cves),
            "activeAlert": False,
            "exposedMachines": len(exposed),
            "installedMachines": len(installs),
            "impactScore": round(sum(c["cvssV3"] for c in cves) * len(exposed) / max(1, len(self.machines)) / 10, 8),
            "isNormalized": True,
            "category": product.category,
        }

    def distributions(self, product: Product) -> list[dict]:
        counts = [0] * len(product.versions)
        for _, version in self.machines_with(product):
            counts[version] += 1
        return [{"version": v, "installations": counts[i], "vulnerabilities": len(product.open_cves(i))}
                for i, v in enumerate(product.versions) if counts[i]]

    def missing_kbs(self, pairs: list[tuple[Product, int]]) -> list[dict]:
        """KBs missing on the given installs, with how many machines miss each and the CVEs it addresses."""
        found: dict[str, dict] = {}
        for product, version in pairs:
            for later in range(version + 1, len(product.versions)):
                kb = product.kbs[later]
                if kb is None:
                    continue
                entry = found.setdefault(kb["id"], {**kb, "machineMissedOn": 0,
                                                    "cveAddressed": len(product.cves[later])})
                entry["machineMissedOn"] += 1
        return sorted(found.values(), key=lambda k: k["id"])

    # -- recommendations, score, remediation -------------------------------------------------------------------
    def _recommendations(self) -> list[dict]:
        out = []
        for product, software in zip(self.products, self.software, strict=True):
            if not software["installedMachines"]:
                continue
            exposed_cves = {c["id"] for m, v in self.machines_with(product) for c in product.open_cves(v)}
            cves = [self.vulnerabilities_by_id[c.upper()] for c in sorted(exposed_cves)]
            os_product = product.category == "OS"
            label = product.name.replace("_", " ").title()
            out.append({
                "id": f"va-_-{product.id}", "productName": product.name,
                "recommendationName": f"Update {label}", "weaknesses": len(cves), "vendor": product.vendor,
                "recommendedVersion": "" if os_product else product.versions[-1],
                "recommendationCategory": "OS" if os_product else "Application", "subCategory": "",
                "severityScore": max((c["cvssV3"] for c in cves), default=0.0),
                "publicExploit": any(c["publicExploit"] for c in cves), "activeAlert": False,
                "associatedThreats": [], "remediationType": "Update",
                "status": "Exception" if product.name == "putty" else "Active",
                "configScoreImpact": 0.0,
                "exposureImpact": round(software["impactScore"] * 3.2, 6),
                "totalMachineCount": software["installedMachines"],
                "exposedMachinesCount": software["exposedMachines"],
                "nonProductivityImpactedAssets": 0, "relatedComponent": label,
                "exposedCriticalDevices": 0,
            })
        for scid, name, platforms in SCA_RECOMMENDATIONS:
            machines = self.sca_machines(scid, platforms)
            out.append({
                "id": f"sca-_-{scid}", "productName": None, "recommendationName": name, "weaknesses": 0,
                "vendor": None, "recommendedVersion": None, "recommendationCategory": "SecurityControls",
                "subCategory": "Antivirus" if scid == "scid-2010" else "Accounts", "severityScore": 0.0,
                "publicExploit": False, "activeAlert": False, "associatedThreats": [],
                "remediationType": "ConfigurationChange", "status": "Active", "configScoreImpact": 2.5,
                "exposureImpact": 0.0, "totalMachineCount": len(machines) * 2, "exposedMachinesCount": len(machines),
                "nonProductivityImpactedAssets": len(machines) // 3, "relatedComponent": name.split("'")[0].strip(),
                "exposedCriticalDevices": 0,
            })
        return out

    def sca_machines(self, scid: str, platforms: tuple[str, ...]) -> list[dict]:
        return [m for m in self.machines if m["osPlatform"] in platforms and random.Random(f"{scid}-{m['id']}").random() < 0.5]

    def recommendation_machines(self, recommendation: dict) -> list[dict]:
        rid = recommendation["id"]
        if rid.startswith("sca-_-"):
            scid = rid[len("sca-_-"):]
            platforms = next(p for s, _, p in SCA_RECOMMENDATIONS if s == scid)
            return self.sca_machines(scid, platforms)
        product = self.products_by_id[rid[len("va-_-"):]]
        return [m for m, v in self.machines_with(product) if product.open_cves(v)]

    def recommendation_vulnerabilities(self, recommendation: dict) -> list[dict]:
        rid = recommendation["id"]
        if rid.startswith("sca-_-"):
            return []
        product = self.products_by_id[rid[len("va-_-"):]]
        ids = {c["id"] for _, v in self.machines_with(product) for c in product.open_cves(v)}
        return [self.vulnerabilities_by_id[i.upper()] for i in sorted(ids)]

    def machine_exposure(self, machine: dict) -> float:
        """0..100: how much this machine's open CVEs weigh (capped)."""
        total = sum(row.cve["cvssV3"] * (1.5 if row.cve["publicExploit"] else 1.0)
                    for row in self.vulns_by_machine[machine["id"]])
        return min(100.0, total / 4)

    def exposure_score(self, machines: list[dict]) -> float:
        return sum(map(self.machine_exposure, machines)) / len(machines) if machines else 0.0

    def _remediation_tasks(self) -> list[dict]:
        rng = self.rng
        candidates = [r for r in self.recommendations if r["exposedMachinesCount"] and r["id"].startswith("va-_-")]
        candidates.sort(key=lambda r: -r["exposureImpact"])
        tasks = []
        for i, rec in enumerate(candidates[:REMEDIATION_TASKS]):
            created = self.now - dt.timedelta(days=rng.uniform(2, 90))
            completed = i % 3 == 2
            machines = self.recommendation_machines(rec)
            tasks.append({
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "title": rec["recommendationName"], "createdOn": format_datetime(created),
                "requesterId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "requesterEmail": "secop2@contoso.example",
                "status": "Completed" if completed else "Active",
                "statusLastModifiedOn": format_datetime(created + dt.timedelta(days=rng.uniform(0, 2))),
                "description": f"{rec['recommendationName']} to remove {rec['weaknesses']} known vulnerabilities.",
                "relatedComponent": rec["relatedComponent"], "targetDevices": len(machines),
                "rbacGroupNames": sorted({m["rbacGroupName"] for m in machines}),
                "fixedDevices": len(machines) if completed else rng.randrange(0, max(1, len(machines))),
                "requesterNotes": None,
                "dueOn": format_datetime((created + dt.timedelta(days=30)).replace(hour=0, minute=0, second=0,
                                                                                   microsecond=0)),
                "category": "Software", "productivityImpactRemediationType": None,
                "priority": rng.choice(["High", "Medium", "Low"]),
                "completionMethod": "Automatic" if completed else None, "completerId": None, "completerEmail": None,
                "scid": None, "type": rec["remediationType"], "productId": rec["id"][len("va-_-"):],
                "vendorId": rec["vendor"], "nameId": rec["productName"],
                "recommendedVersion": rec["recommendedVersion"] or None, "recommendedVendor": None,
                "recommendedProgram": None,
            })
        return tasks

    def remediation_machines(self, task: dict) -> list[dict]:
        return self.recommendation_machines(self.recommendations_by_id[f"va-_-{task['productId']}"])


_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BUILD_LOCK = threading.Lock()


def tvm_of(store) -> TvmData:
    """The store's vulnerability-management data, built on first use and rebuilt if machines were added."""
    with _BUILD_LOCK:
        data = _BUILT.get(store)
        if data is None or len(data.machines) != len(store.machines):
            data = TvmData(list(store.machines), store.seed, store.now)
            _BUILT[store] = data
        return data

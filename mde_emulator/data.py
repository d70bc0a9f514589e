"""Deterministic seed data and the in-memory store (machines, users, alerts, evidence, investigations, actions).

Everything derives from one `random.Random(seed)`; timestamps are relative to the start time so the data looks
recent. Records are stored as plain dicts in Microsoft's JSON shape (camelCase, field order of real responses),
so the API modules can serve them as they are.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import random
import threading
import uuid

from .clock import Clock
from .odata import format_datetime

DOMAIN = "contoso.local"
RBAC_GROUPS = [(0, "UnassignedGroup"), (4310, "Servers"), (4311, "Workstations"), (4312, "Finance"),
               (4313, "Engineering")]
PLATFORMS = [  # (osPlatform, weight, name prefix, version, builds, rbac group index)
    ("Windows10", 30, "desktop", ["21H2", "22H2"], [19044, 19045], (2, 3, 4)),
    ("Windows11", 35, "laptop", ["22H2", "23H2", "24H2"], [22621, 22631, 26100], (2, 3, 4)),
    ("WindowsServer2019", 10, "srv", ["1809"], [17763], (1,)),
    ("WindowsServer2022", 10, "srv", ["21H2"], [20348], (1,)),
    ("Linux", 10, "linux", ["Ubuntu 22.04", "RHEL 9"], [None], (1, 4, 0)),
    ("macOS", 5, "mac", ["14.5", "15.1"], [None], (3, 4, 0)),
]
HEALTH = [("Active", 82), ("Inactive", 9), ("ImpairedCommunication", 4), ("NoSensorData", 3),
          ("NoSensorDataImpairedCommunication", 1), ("Unknown", 1)]
RISK = [("None", 35), ("Informational", 10), ("Low", 25), ("Medium", 20), ("High", 10)]
EXPOSURE = [("None", 10), ("Low", 40), ("Medium", 35), ("High", 15)]
DEVICE_VALUE = [("Normal", 85), ("Low", 5), ("High", 10)]
TAGS = ["VIP", "Finance", "Lab", "Kiosk", "PCI", "Test Devices", "O'Brien's team"]
FIRST_NAMES = ["alex", "maria", "li", "omar", "sara", "john", "fatima", "ken", "olga", "raj", "emma", "noah"]
LAST_NAMES = ["smith", "garcia", "chen", "haddad", "novak", "kim", "obrien", "patel", "rossi", "berg"]

# (title, category, severity, detectionSource, mitreTechniques, threatFamilyName, evidence kinds)
ALERT_KINDS = [
    ("Suspicious PowerShell command line", "Execution", "Medium", "WindowsDefenderAtp", ["T1059.001"], None,
     ("Process", "User")),
    ("'Mimikatz' credential theft tool", "CredentialAccess", "High", "WindowsDefenderAv", ["T1003"], "Mimikatz",
     ("File", "Process", "User")),
    ("Ransomware behavior detected in the file system", "Ransomware", "High", "WindowsDefenderAtp",
     ["T1486"], None, ("File", "Process")),
    ("Connection to a custom network indicator", "CommandAndControl", "Medium", "CustomerTI", ["T1071"],
     None, ("Ip", "Url", "Process")),
    ("'Wacatac' malware was prevented", "Malware", "Informational", "WindowsDefenderAv", [], "Wacatac",
     ("File",)),
    ("Suspicious scheduled task", "Persistence", "Low", "WindowsDefenderAtp", ["T1053.005"], None,
     ("Process", "Registry")),
    ("Unusual sign-in activity", "InitialAccess", "Medium", "MicrosoftDefenderForIdentity", ["T1078"], None,
     ("User", "Ip")),
    ("Suspicious connection to a known phishing site", "InitialAccess", "Medium", "SmartScreen", ["T1566.002"],
     None, ("Url", "Ip", "User")),
    ("Process injection detected", "DefenseEvasion", "High", "WindowsDefenderAtp", ["T1055"], None,
     ("Process", "File")),
    ("Possible lateral movement using remote services", "LateralMovement", "Medium", "WindowsDefenderAtp",
     ["T1021.002"], None, ("Ip", "User", "Process")),
    ("Anomalous data transfer to cloud storage", "Exfiltration", "Low", "WindowsDefenderAtp", ["T1567"], None,
     ("Url", "Process")),
    ("Custom detection: rare binary executed", "SuspiciousActivity", "Low", "CustomDetection", [], None,
     ("File",)),
]
DETERMINATIONS = ["MultiStagedAttack", "MaliciousUserActivity", "Malware", "Phishing", "UnwantedSoftware",
                  "SecurityTesting", "LineOfBusinessApplication", "ConfirmedActivity", "NotMalicious", "Other"]
CLASSIFICATIONS = ["TruePositive", "InformationalExpectedActivity", "FalsePositive"]
INVESTIGATION_STATES = ["Running", "SuccessfullyRemediated", "Benign", "Failed", "PartiallyRemediated",
                        "PendingApproval", "TerminatedBySystem", "UnsupportedAlertType"]
FILE_NAMES = ["invoice.exe", "mimikatz.exe", "update.ps1", "svch0st.exe", "payload.dll", "setup.msi",
              "report.docm", "agent.bin", "loader.js", "tool.exe"]
SIGNED_FILES = ("setup.msi",)
DOMAIN_WORDS = ["login-portal", "cdn-update", "files-share", "secure-docs", "payroll", "m1crosoft-support",
                "invoice-center", "track-parcel"]

TICKS_AT_EPOCH = 621355968000000000  # .NET ticks at 1970-01-01


def _weighted(rng: random.Random, table):
    """Pick from [(value, weight)]; cumulative weights are cached per table."""
    key = id(table)
    if key not in _CUMULATIVE:
        _CUMULATIVE[key] = ([v for v, _ in table], list(itertools.accumulate(w for _, w in table)))
    values, cumulative = _CUMULATIVE[key]
    return values[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


_CUMULATIVE: dict[int, tuple[list, list]] = {}


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _mac(rng: random.Random) -> str:
    return "".join(f"{rng.randrange(256):02X}" for _ in range(6))


# Alert ids embed .NET ticks of the creation time. Ours count from a fixed instant plus the offset from the
# store's start, so the same seed gives the same ids on every run while ids still grow with creation time.
ID_ANCHOR_TICKS = TICKS_AT_EPOCH + int(dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc).timestamp()) * 10_000_000


class Store:
    """All emulator data, guarded by one lock for writes. Reads take shallow copies of the lists."""

    def __init__(self, *, seed: int, machines: int, alerts: int, tenant_id: str, now: dt.datetime | None = None,
                 clock: Clock | None = None):
        self.lock = threading.RLock()
        self.tenant_id = tenant_id
        self.clock = clock or Clock()
        self.now = now or self.clock.utcnow()  # the seed data's "now"; new records use the clock
        self.seed = seed
        self.rng = random.Random(seed)
        self.machines: list[dict] = []
        self.machines_by_id: dict[str, dict] = {}
        self.machines_by_name: dict[str, dict] = {}
        self.machine_state: dict[str, dict] = {}  # internal: isolation / code restriction, not in the API shape
        self.users: dict[str, dict] = {}  # accountName (lower) -> user record
        self.machine_users: dict[str, list[str]] = {}  # machine id -> account names (lower)
        self.alerts: list[dict] = []
        self.alerts_by_id: dict[str, dict] = {}
        self.evidence: dict[str, list[dict]] = {}  # alert id -> evidence
        self.files: dict[str, dict] = {}  # sha1 -> file record
        self.investigations: list[dict] = []
        self.investigations_by_id: dict[str, dict] = {}
        self.actions: list[dict] = []
        self.actions_by_id: dict[str, dict] = {}
        self.action_plans: dict[str, dict] = {}  # action id -> {"start", "delay", "outcome"} for non-final ones
        self._next_incident = 1000 + self.rng.randrange(1000)
        self._next_investigation = 5000 + self.rng.randrange(1000)
        self._file_pool = [self._make_file(i) for i in range(max(30, alerts // 5))]
        self._ip_pool = [f"{self.rng.choice([198, 203, 185, 45])}.{self.rng.randrange(256)}."
                         f"{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"
                         for _ in range(max(20, alerts // 10))]
        self._domain_pool = [f"{w}{i}.example" for i, w in enumerate(DOMAIN_WORDS * max(1, alerts // 80))]
        self._make_users(max(20, machines // 3))
        self._user_names = list(self.users)
        for _ in range(machines):
            self._add_machine()
        start = self.now - dt.timedelta(days=30)
        times = sorted(start + dt.timedelta(seconds=self.rng.uniform(0, 30 * 86400 - 300)) for _ in range(alerts))
        for created in times:
            self.add_alert(created=created, visible_at=created + dt.timedelta(seconds=self.rng.uniform(5, 120)))
        for _ in range(min(200, machines // 50)):
            self._add_past_action()

    # -- users, machines ---------------------------------------------------------------------------------------
    def _make_users(self, count: int) -> None:
        rng = self.rng
        for i in range(count):
            name = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{i}"
            first = self.now - dt.timedelta(days=rng.uniform(60, 900))
            self.users[name] = {
                "id": f"contoso\\{name}", "accountName": name, "accountDomain": "contoso",
                "accountSid": f"S-1-5-21-{rng.randrange(10**9)}-{rng.randrange(10**9)}-{rng.randrange(10**9)}-"
                              f"{1000 + i}",
                "firstSeen": format_datetime(first),
                "lastSeen": format_datetime(self.now - dt.timedelta(hours=rng.uniform(0, 200))),
                "logonTypes": rng.choice(["Interactive", "Network", "RemoteInteractive", "Interactive, Network"]),
                "isDomainAdmin": rng.random() < 0.05, "isOnlyNetworkUser": rng.random() < 0.1,
            }

    def _add_machine(self) -> dict:
        rng = self.rng
        platform, _, prefix, versions, builds, groups = rng.choices(PLATFORMS, weights=[p[1] for p in PLATFORMS])[0]
        while True:
            name = f"{prefix}-{_hex(rng, 28)}.{DOMAIN}"
            if name not in self.machines_by_name:
                break
        mid = _hex(rng, 160)
        gid, gname = RBAC_GROUPS[rng.choice(groups)]
        first = self.now - dt.timedelta(days=rng.uniform(30, 700))
        last = max(first + dt.timedelta(hours=1),
                   self.now - dt.timedelta(hours=rng.uniform(0.1, 72 if rng.random() < 0.9 else 24 * 40)))
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        is_windows = platform.startswith("Windows")
        aad = is_windows and rng.random() < 0.7
        addresses = [{"ipAddress": ip, "macAddress": _mac(rng), "type": "Ethernet", "operationalStatus": "Up"}]
        if rng.random() < 0.3:
            addresses.append({"ipAddress": f"fe80::{rng.randrange(65536):x}:{rng.randrange(65536):x}",
                              "macAddress": addresses[0]["macAddress"], "type": "Ethernet",
                              "operationalStatus": "Up"})
        if rng.random() < 0.2:
            addresses.append({"ipAddress": f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                              "macAddress": _mac(rng), "type": "Wireless80211", "operationalStatus": "Down"})
        tags = rng.sample(TAGS, k=rng.choice([0, 0, 0, 1, 1, 2]))
        machine = {
            "id": mid,
            "computerDnsName": name,
            "firstSeen": format_datetime(first),
            "lastSeen": format_datetime(last),
            "osPlatform": platform,
            "osVersion": None,
            "osProcessor": "x64",
            "version": rng.choice(versions),
            "lastIpAddress": ip,
            "lastExternalIpAddress": f"{rng.choice([20, 40, 52, 104])}.{rng.randrange(256)}.{rng.randrange(256)}."
                                     f"{rng.randrange(1, 255)}",
            "agentVersion": f"10.8{rng.randrange(100, 999)}.{rng.randrange(17763, 26100)}.{rng.randrange(1000, 9999)}",
            "osBuild": rng.choice(builds),
            "healthStatus": _weighted(rng, HEALTH),
            "deviceValue": _weighted(rng, DEVICE_VALUE),
            "rbacGroupId": gid,
            "rbacGroupName": gname,
            "riskScore": _weighted(rng, RISK),
            "exposureLevel": _weighted(rng, EXPOSURE),
            "isAadJoined": aad,
            "aadDeviceId": _guid(rng) if aad else None,
            "machineTags": tags,
            "defenderAvStatus": rng.choice(["Updated", "Updated", "Updated", "NotUpdated"]),
            "onboardingStatus": "Onboarded",
            "osArchitecture": "64-bit",
            "managedBy": rng.choice(["MicrosoftDefenderForEndpoint", "Intune"]),
            "managedByStatus": "Success",
            "ipAddresses": addresses,
            "vmMetadata": None,
        }
        self.machines.append(machine)
        self.machines_by_id[mid] = machine
        self.machines_by_name[name] = machine
        self.machine_state[mid] = {"isolation": "NotIsolated", "codeExecutionRestricted": False}
        self.machine_users[mid] = sorted({rng.choice(self._user_names) for _ in range(rng.choice([1, 1, 2, 3]))})
        return machine

    def find_machine(self, key: str) -> dict | None:
        """By machine id or computer DNS name (case-insensitive), as the service accepts both."""
        return self.machines_by_id.get(key.lower()) or self.machines_by_name.get(key.lower())

    # -- files / alerts ----------------------------------------------------------------------------------------
    def _make_file(self, i: int) -> dict:
        rng = self.rng
        sha1 = _hex(rng, 160)
        name = FILE_NAMES[i % len(FILE_NAMES)]
        observed = self.now - dt.timedelta(days=rng.uniform(1, 400))
        record = {
            "sha1": sha1, "sha256": _hex(rng, 256), "md5": _hex(rng, 128),
            "globalPrevalence": rng.randrange(1, 5000),
            "globalFirstObserved": format_datetime(observed),
            "globalLastObserved": format_datetime(observed + dt.timedelta(days=rng.uniform(0, 30))),
            "size": rng.randrange(2_000, 5_000_000), "fileType": "PortableExecutable" if name.endswith(
                (".exe", ".dll")) else None,
            "isPeFile": name.endswith((".exe", ".dll")), "filePublisher": None, "fileProductName": None,
            "signer": None, "issuer": None, "signerHash": None, "isValidCertificate": False,
            "determinationType": rng.choice(["Malware", "Unknown", "Pua"]),
            "determinationValue": rng.choice(["Trojan:Win32/Wacatac.B!ml", "HackTool:Win32/Mimikatz", ""]),
            "fileName": name,
        }
        if name in SIGNED_FILES:  # known-good installers: signed and Clean, so reputation has a good verdict
            record.update(filePublisher="Contoso Ltd", fileProductName="Contoso Setup", signer="Contoso Ltd",
                          issuer="Contoso Code Signing CA", signerHash=sha1[::-1], isValidCertificate=True,
                          determinationType="Clean", determinationValue="")
        self.files[sha1] = record
        return record

    def _evidence(self, kinds, created: dt.datetime, machine: dict, user: dict | None) -> list[dict]:
        rng = self.rng
        base = {k: None for k in (
            "entityType", "evidenceCreationTime", "sha1", "sha256", "fileName", "filePath", "processId",
            "processCommandLine", "processCreationTime", "parentProcessId", "parentProcessCreationTime",
            "parentProcessFileName", "parentProcessFilePath", "ipAddress", "url", "registryKey", "registryHive",
            "registryValueType", "registryValue", "accountName", "domainName", "userSid", "aadUserId",
            "userPrincipalName", "detectionStatus")}
        out = []
        for kind in kinds:
            ev = dict(base, entityType=kind, evidenceCreationTime=format_datetime(created))
            if kind in ("File", "Process"):
                f = rng.choice(self._file_pool)
                ev.update(sha1=f["sha1"], sha256=f["sha256"], fileName=f["fileName"],
                          filePath=rng.choice(["C:\\Users\\Public\\Downloads", "C:\\Windows\\Temp",
                                               "C:\\ProgramData\\tmp"]),
                          detectionStatus=rng.choice(["Detected", "Prevented", "Blocked"]))
                if kind == "Process":
                    ev.update(processId=rng.randrange(400, 20000),
                              processCommandLine=f"{f['fileName']} -enc {_hex(rng, 48)}",
                              processCreationTime=format_datetime(created - dt.timedelta(seconds=30)),
                              parentProcessId=rng.randrange(400, 20000),
                              parentProcessFileName="explorer.exe", parentProcessFilePath="C:\\Windows",
                              parentProcessCreationTime=format_datetime(created - dt.timedelta(hours=2)))
            elif kind == "Ip":
                ev.update(ipAddress=rng.choice(self._ip_pool))
            elif kind == "Url":
                ev.update(url=rng.choice(self._domain_pool))
            elif kind == "Registry":
                ev.update(registryKey="SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
                          registryHive="HKEY_LOCAL_MACHINE", registryValueType="String",
                          registryValue="C:\\ProgramData\\tmp\\agent.bin")
            elif kind == "User" and user is not None:
                ev.update(accountName=user["accountName"], domainName="CONTOSO", userSid=user["accountSid"],
                          aadUserId=_guid(rng), userPrincipalName=f"{user['accountName']}@contoso.example")
            out.append(ev)
        return out

    def add_alert(self, *, created: dt.datetime, visible_at: dt.datetime | None = None, severity: str | None = None,
                  status: str | None = None, machine: dict | None = None, title: str | None = None,
                  category: str | None = None, description: str | None = None,
                  detection_source: str | None = None, recommended_action: str | None = None) -> dict:
        """Create one alert. `created` is alertCreationTime; `visible_at` (default now) is its lastUpdateTime."""
        with self.lock:
            rng = self.rng
            kind = rng.choice(ALERT_KINDS)
            ktitle, kcategory, kseverity, ksource, mitre, family, evidence_kinds = kind
            machine = machine or rng.choice(self.machines)
            users = self.machine_users.get(machine["id"]) or []
            user = self.users.get(rng.choice(users)) if users and rng.random() < 0.8 else None
            status = status or _weighted(rng, [("New", 50), ("InProgress", 20), ("Resolved", 30)])
            visible_at = visible_at or self.clock.utcnow()
            first_event = created - dt.timedelta(seconds=rng.uniform(10, 3600))
            resolved = status == "Resolved"
            investigation_id = None
            if rng.random() < 0.3:
                investigation_id = self._add_investigation(created, machine, None)
            if rng.random() < 0.7 or not self.alerts:
                self._next_incident += 1
            ticks = ID_ANCHOR_TICKS + int((created - self.now).total_seconds() * 10_000_000)
            aid = f"da{ticks}_{rng.randrange(1_000_000_000, 10_000_000_000)}"
            alert = {
                "id": aid,
                "incidentId": self._next_incident,
                "investigationId": investigation_id,
                "assignedTo": (rng.choice(["secop2@contoso.example", "Automation"]) if status != "New" else None),
                "severity": severity or kseverity,
                "status": status,
                "classification": rng.choice(CLASSIFICATIONS) if resolved else None,
                "determination": rng.choice(DETERMINATIONS) if resolved else None,
                "investigationState": (self.investigations_by_id[str(investigation_id)]["state"]
                                       if investigation_id else "UnsupportedAlertType"),
                "detectionSource": detection_source or ksource,
                "detectorId": _guid(rng),
                "category": category or kcategory,
                "threatFamilyName": family,
                "title": title or ktitle,
                "description": description or f"{ktitle} was observed on {machine['computerDnsName']}.",
                "alertCreationTime": format_datetime(created),
                "firstEventTime": format_datetime(first_event),
                "lastEventTime": format_datetime(first_event + (created - first_event) * rng.random()),
                "lastUpdateTime": format_datetime(visible_at),
                "resolvedTime": format_datetime(visible_at) if resolved else None,
                "machineId": machine["id"],
                "computerDnsName": machine["computerDnsName"],
                "rbacGroupName": machine["rbacGroupName"],
                "aadTenantId": self.tenant_id,
                "threatName": f"{family}!ml" if family else None,
                "mitreTechniques": list(mitre),
                "relatedUser": ({"userName": user["accountName"], "domainName": "CONTOSO"} if user else None),
                "comments": ([{"comment": "Investigating", "createdBy": "secop2@contoso.example",
                               "createdTime": format_datetime(visible_at)}] if status != "New" else []),
            }
            if investigation_id:
                self.investigations_by_id[str(investigation_id)]["triggeringAlertId"] = aid
            self.evidence[aid] = self._evidence(evidence_kinds, created, machine, user)
            self.alerts.append(alert)
            self.alerts_by_id[aid] = alert
            return alert

    def related(self, alert_id_: str, entity_type: str) -> list[dict]:
        return [e for e in self.evidence.get(alert_id_, []) if e["entityType"] == entity_type]

    # -- investigations / actions ------------------------------------------------------------------------------
    def _add_investigation(self, start: dt.datetime, machine: dict, alert: str | None, state: str | None = None) -> int:
        self._next_investigation += 1
        iid = self._next_investigation
        state = state or self.rng.choice(INVESTIGATION_STATES)
        final = state not in ("Running", "PendingApproval", "Queued")
        record = {
            "id": str(iid), "startTime": format_datetime(start),
            "endTime": format_datetime(start + dt.timedelta(minutes=self.rng.uniform(5, 90))) if final else None,
            "cancelledBy": None, "state": state, "statusDetails": None, "machineId": machine["id"],
            "computerDnsName": machine["computerDnsName"], "triggeringAlertId": alert,
        }
        self.investigations.append(record)
        self.investigations_by_id[record["id"]] = record
        return iid

    def start_investigation(self, machine: dict, now: dt.datetime) -> dict:
        with self.lock:
            iid = self._add_investigation(now, machine, None, state="Running")
            return self.investigations_by_id[str(iid)]

    def _add_past_action(self) -> None:
        rng = self.rng
        machine = rng.choice(self.machines)
        created = self.now - dt.timedelta(days=rng.uniform(1, 25))
        atype, scope = rng.choice([("RunAntiVirusScan", "Quick"), ("Isolate", "Full"), ("Unisolate", None),
                                   ("CollectInvestigationPackage", None), ("RunAntiVirusScan", "Full")])
        self.add_action({
            "id": _guid(rng), "type": atype, "title": None, "requestor": "secop2@contoso.example",
            "requestorComment": "Routine response", "status": rng.choice(["Succeeded", "Succeeded", "Failed",
                                                                          "Cancelled", "TimeOut"]),
            "machineId": machine["id"], "computerDnsName": machine["computerDnsName"],
            "creationDateTimeUtc": format_datetime(created),
            "lastUpdateDateTimeUtc": format_datetime(created + dt.timedelta(minutes=rng.uniform(1, 30))),
            "cancellationRequestor": None, "cancellationComment": None, "cancellationDateTimeUtc": None,
            "errorHResult": 0, "scope": scope, "externalId": None, "requestSource": "Portal",
            "relatedFileInfo": None, "commands": [], "troubleshootInfo": None,
        })

    def add_action(self, action: dict, plan: dict | None = None) -> dict:
        with self.lock:
            self.actions.append(action)
            self.actions_by_id[action["id"]] = action
            if plan is not None:
                self.action_plans[action["id"]] = plan
            return action

    def new_guid(self) -> str:
        with self.lock:
            return _guid(self.rng)

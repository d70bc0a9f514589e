"""Advanced-hunting tables (Microsoft's names, columns and types) seeded from the emulator's store.

Rows are derived deterministically from the machines, users, files and alerts the Defender API serves, so a hunt
finds the same devices, hashes and accounts the other endpoints report. A set of "hunt machines" also carries one
scenario per XSOAR template purpose (credential dumping, new services, tampering, cleared logs, ...), so every
template finds rows.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from urllib.parse import quote

from .data import Store
from .odata import parse_datetime

# KQL type per column block, as Microsoft's schema reference writes them.
COMMON = [("Timestamp", "datetime"), ("DeviceId", "string"), ("DeviceName", "string"), ("ActionType", "string"),
          ("ReportId", "long"), ("AppGuardContainerId", "string"), ("AdditionalFields", "string")]
COMMON_NO_FIELDS = COMMON[:-1]
TARGET_FILE = [("FileName", "string"), ("FolderPath", "string"), ("SHA1", "string"), ("SHA256", "string"),
               ("MD5", "string"), ("FileSize", "long")]
_IP_STRINGS = ["AccountDomain", "AccountName", "AccountSid", "AccountUpn", "AccountObjectId", "SHA1", "SHA256",
               "MD5", "FileName", "FolderPath", "CommandLine", "ParentFileName", "IntegrityLevel", "TokenElevation",
               "VersionInfoCompanyName", "VersionInfoProductName", "VersionInfoProductVersion",
               "VersionInfoInternalFileName", "VersionInfoOriginalFileName", "VersionInfoFileDescription"]
INITIATING = ([(f"InitiatingProcess{n}", "string") for n in _IP_STRINGS]
              + [(f"InitiatingProcess{n}", "long") for n in ("FileSize", "Id", "ParentId")]
              + [(f"InitiatingProcess{n}", "datetime") for n in ("CreationTime", "ParentCreationTime")])
REMOTE_SESSION = [("InitiatingProcessSessionId", "long"), ("IsInitiatingProcessRemoteSession", "bool"),
                  ("InitiatingProcessRemoteSessionDeviceName", "string"),
                  ("InitiatingProcessRemoteSessionIP", "string")]
_VERSION_INFO = ["CompanyName", "ProductName", "ProductVersion", "InternalFileName", "OriginalFileName",
                 "FileDescription"]
ACCOUNT = [(f"Account{n}", "string") for n in ("Domain", "Name", "Sid", "Upn", "ObjectId")]


def _strings(*names: str) -> list[tuple[str, str]]:
    return [(n, "string") for n in names]


TABLES: dict[str, list[tuple[str, str]]] = {
    "DeviceProcessEvents": COMMON + TARGET_FILE + [(f"ProcessVersionInfo{n}", "string") for n in _VERSION_INFO]
    + [("ProcessId", "long"), *_strings("ProcessCommandLine", "ProcessIntegrityLevel", "ProcessTokenElevation"),
       ("ProcessCreationTime", "datetime")] + ACCOUNT + [("LogonId", "long")] + INITIATING
    + [("InitiatingProcessLogonId", "long"),
       *_strings("InitiatingProcessSignerType", "InitiatingProcessSignatureStatus")],
    "DeviceNetworkEvents": COMMON + _strings("RemoteIP", "RemoteUrl", "LocalIP", "Protocol", "LocalIPType",
                                             "RemoteIPType")
    + [("RemotePort", "int"), ("LocalPort", "int")] + INITIATING + REMOTE_SESSION,
    "DeviceFileEvents": COMMON + TARGET_FILE + _strings("FileOriginUrl", "FileOriginReferrerUrl", "FileOriginIP",
                                                        "PreviousFolderPath", "PreviousFileName")
    + INITIATING + _strings("RequestProtocol", "RequestSourceIP", "RequestAccountName", "RequestAccountDomain",
                            "RequestAccountSid", "ShareName", "SensitivityLabel", "SensitivitySubLabel")
    + [("RequestSourcePort", "int"), ("IsAzureInfoProtectionApplied", "bool")] + REMOTE_SESSION,
    "DeviceRegistryEvents": COMMON_NO_FIELDS + _strings(
        "RegistryKey", "RegistryValueType", "RegistryValueName", "RegistryValueData", "PreviousRegistryKey",
        "PreviousRegistryValueName", "PreviousRegistryValueData") + INITIATING + REMOTE_SESSION,
    "DeviceLogonEvents": COMMON + _strings("LogonType", "AccountDomain", "AccountName", "AccountSid", "Protocol",
                                           "FailureReason", "RemoteDeviceName", "RemoteIP", "RemoteIPType")
    + [("IsLocalAdmin", "bool"), ("LogonId", "long"), ("RemotePort", "int")] + INITIATING + REMOTE_SESSION,
    "DeviceEvents": COMMON + TARGET_FILE + _strings(
        "AccountDomain", "AccountName", "AccountSid", "RemoteUrl", "RemoteDeviceName", "ProcessCommandLine",
        "ProcessTokenElevation", "RegistryKey", "RegistryValueName", "RegistryValueData", "RemoteIP", "LocalIP",
        "FileOriginUrl", "FileOriginIP")
    + [("ProcessId", "long"), ("LogonId", "long"), ("ProcessCreationTime", "datetime"), ("RemotePort", "int"),
       ("LocalPort", "int")]
    + [c for c in INITIATING if c[0] not in ("InitiatingProcessIntegrityLevel", "InitiatingProcessTokenElevation")]
    + [("InitiatingProcessLogonId", "long")] + REMOTE_SESSION
    + [("CreatedProcessSessionId", "long"), ("IsProcessRemoteSession", "bool"),
       *_strings("ProcessRemoteSessionDeviceName", "ProcessRemoteSessionIP")],
    "DeviceImageLoadEvents": COMMON_NO_FIELDS + TARGET_FILE + INITIATING,
    "DeviceInfo": [("Timestamp", "datetime"), ("DeviceId", "string"), ("DeviceName", "string"), ("ReportId", "long"),
                   ("AdditionalFields", "string")]
    + _strings("ClientVersion", "PublicIP", "OSArchitecture", "OSPlatform", "JoinType", "AadDeviceId",
               "LoggedOnUsers", "RegistryDeviceTag", "OSVersion", "MachineGroup", "OnboardingStatus",
               "DeviceCategory", "DeviceType", "DeviceSubtype", "Model", "Vendor", "OSDistribution", "OSVersionInfo",
               "MergedDeviceIds", "MergedToDeviceId", "SensorHealthState", "ExclusionReason", "ExposureLevel",
               "AssetValue", "DeviceManualTags", "DeviceDynamicTags", "ConnectivityType", "HostDeviceId")
    + [("OSBuild", "long"), ("IsAzureADJoined", "bool"), ("IsInternetFacing", "bool"), ("IsExcluded", "bool")],
    "DeviceNetworkInfo": [("Timestamp", "datetime"), ("DeviceId", "string"), ("DeviceName", "string"),
                          ("ReportId", "long")]
    + _strings("NetworkAdapterName", "MacAddress", "NetworkAdapterType", "NetworkAdapterStatus", "TunnelType",
               "ConnectedNetworks", "DnsAddresses", "IPv4Dhcp", "IPv6Dhcp", "DefaultGateways", "IPAddresses",
               "NetworkAdapterVendor"),
    "DeviceFileCertificateInfo": [("Timestamp", "datetime"), ("DeviceId", "string"), ("DeviceName", "string"),
                                  ("ReportId", "long")]
    + _strings("SHA1", "SignatureType", "Signer", "SignerHash", "Issuer", "IssuerHash", "CertificateSerialNumber",
               "CrlDistributionPointUrls")
    + [("IsSigned", "bool"), ("IsTrusted", "bool"), ("IsRootSignerMicrosoft", "bool"),
       ("CertificateCreationTime", "datetime"), ("CertificateExpirationTime", "datetime"),
       ("CertificateCountersignatureTime", "datetime")],
}

HUNT_MACHINES = 12
ALERT_ROWS = 300  # alerts whose evidence becomes events (the newest ones)
SYSTEM_SID = "S-1-5-18"
SYS32 = "C:\\Windows\\System32"
POWERSHELL = f"{SYS32}\\WindowsPowerShell\\v1.0"
SERVICES_KEY = "HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services"
FIREWALL_KEY = ("HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\SharedAccess\\Parameters\\FirewallPolicy"
                "\\FirewallRules")
STARTUP = "AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup"
PRIVATE_PEERS = ["10.20.1.15", "10.20.1.16", "192.168.10.4", "172.16.5.9"]
ENCODED = "SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA"
TAMPERING = [("sc.exe", SYS32, "sc.exe stop WinDefend"), ("sc.exe", SYS32, "sc.exe config Sense start= disabled"),
             ("powershell.exe", POWERSHELL, "powershell.exe Set-MpPreference -DisableRealtimeMonitoring $true"),
             ("taskkill.exe", SYS32, "taskkill.exe /F /IM MsSense.exe"),
             ("cmd.exe", SYS32, 'cmd.exe /c reg add "HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows Defender" '
                                "/v DisableAntiSpyware /t REG_DWORD /d 1 /f")]


class _Seeder:
    """Builds the rows of every table; one instance per store snapshot."""

    def __init__(self, store: Store, seed: int):
        self.store = store
        self.rng = random.Random(f"hunting-{seed}")
        self.now = store.now
        self.report_id = 10_000
        self.rows: dict[str, list[dict]] = {t: [] for t in TABLES}
        self.files = list(store.files.values())

    # -- helpers ---------------------------------------------------------------------------------------------
    def when(self, max_days: float = 7.0) -> dt.datetime:
        return self.now - dt.timedelta(seconds=self.rng.uniform(60, max_days * 86400))

    def device(self, machine: dict) -> dict:
        return {"DeviceId": machine["id"], "DeviceName": machine["computerDnsName"]}

    def user(self, machine: dict) -> dict:
        names = self.store.machine_users.get(machine["id"]) or list(self.store.users)[:1]
        return self.store.users[names[0]]

    def initiating(self, machine: dict, file_name: str, folder: str, command: str, *, parent: str = "explorer.exe",
                   account: dict | None = None, sha1: str = "", md5: str = "", sha256: str = "",
                   pid: int | None = None, when: dt.datetime | None = None, system: bool = False) -> dict:
        account = account or self.user(machine)
        start = (when or self.now) - dt.timedelta(minutes=self.rng.uniform(1, 90))
        fields = {
            "InitiatingProcessAccountDomain": "nt authority" if system else account["accountDomain"],
            "InitiatingProcessAccountName": "system" if system else account["accountName"],
            "InitiatingProcessAccountSid": SYSTEM_SID if system else account["accountSid"],
            "InitiatingProcessAccountUpn": "" if system else f"{account['accountName']}@contoso.example",
            "InitiatingProcessSHA1": sha1 or self._hex(160), "InitiatingProcessSHA256": sha256,
            "InitiatingProcessMD5": md5 or self._hex(128), "InitiatingProcessFileName": file_name,
            "InitiatingProcessFolderPath": f"{folder}\\{file_name}".lower(),
            "InitiatingProcessCommandLine": command, "InitiatingProcessParentFileName": parent,
            "InitiatingProcessIntegrityLevel": "System" if system else "Medium",
            "InitiatingProcessTokenElevation": "TokenElevationTypeDefault",
            "InitiatingProcessVersionInfoCompanyName": "Microsoft Corporation" if folder.startswith(SYS32) else "",
            "InitiatingProcessVersionInfoProductName": "Microsoft® Windows® Operating System"
            if folder.startswith(SYS32) else "",
            "InitiatingProcessVersionInfoOriginalFileName": file_name.upper() if folder.startswith(SYS32) else "",
            "InitiatingProcessFileSize": self.rng.randrange(20_000, 900_000),
            "InitiatingProcessId": pid if pid is not None else self.rng.randrange(400, 20000),
            "InitiatingProcessParentId": self.rng.randrange(400, 20000),
            "InitiatingProcessCreationTime": start,
            "InitiatingProcessParentCreationTime": start - dt.timedelta(hours=self.rng.uniform(1, 48)),
        }
        return fields

    def _hex(self, bits: int) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def add(self, table: str, machine: dict | None, action: str | None = None, *, when: dt.datetime | None = None,
            **columns) -> dict:
        self.report_id += 1
        row = {"Timestamp": when or self.when(), "ReportId": self.report_id, **(self.device(machine) if machine
                                                                                 else {})}
        if action is not None:
            row["ActionType"] = action
        row.update(columns)
        self.rows[table].append(row)
        return row

    def process(self, machine: dict, file_name: str, folder: str, command: str, *, initiating: dict,
                account: dict | None = None, file: dict | None = None, when: dt.datetime | None = None,
                signature: str = "Valid") -> dict:
        account = account or self.user(machine)
        when = when or self.when()
        file = file or {}
        return self.add(
            "DeviceProcessEvents", machine, "ProcessCreated", when=when, FileName=file_name,
            FolderPath=f"{folder}\\{file_name}", SHA1=file.get("sha1") or self._hex(160),
            SHA256=file.get("sha256") or self._hex(256), MD5=file.get("md5") or self._hex(128),
            FileSize=file.get("size") or self.rng.randrange(20_000, 900_000), ProcessId=self.rng.randrange(400, 30000),
            ProcessCommandLine=command, ProcessIntegrityLevel="High", ProcessTokenElevation="TokenElevationTypeFull",
            ProcessCreationTime=when, AccountDomain=account["accountDomain"], AccountName=account["accountName"],
            AccountSid=account["accountSid"], AccountUpn=f"{account['accountName']}@contoso.example",
            LogonId=self.rng.randrange(100_000, 999_999), InitiatingProcessLogonId=self.rng.randrange(100_000, 999_999),
            InitiatingProcessSignerType="OsVendor" if signature == "Valid" else "None",
            InitiatingProcessSignatureStatus=signature, ProcessVersionInfoProductName=initiating.get(
                "InitiatingProcessVersionInfoProductName", ""), **initiating)

    def network(self, machine: dict, remote_ip: str, port: int, initiating: dict, *, url: str = "",
                action: str = "ConnectionSuccess", fields: dict | None = None) -> dict:
        public = not remote_ip.startswith(("10.", "192.168.", "172.16."))
        return self.add("DeviceNetworkEvents", machine, action, RemoteIP=remote_ip, RemotePort=port, RemoteUrl=url,
                        LocalIP=machine["lastIpAddress"], LocalPort=self.rng.randrange(49152, 65535),
                        Protocol="Tcp" if port != 53 else "Udp", LocalIPType="Private",
                        RemoteIPType="Public" if public else "Private",
                        AdditionalFields=json.dumps(fields) if fields else "", **initiating)

    # -- seeding ---------------------------------------------------------------------------------------------
    def build(self) -> dict[str, list[dict]]:
        for machine in self.store.machines:
            self.device_info(machine)
        windows = [m for m in self.store.machines if m["osPlatform"].startswith("Windows")]
        for machine in windows[:HUNT_MACHINES]:
            self.scenarios(machine)
        for alert in list(self.store.alerts)[-ALERT_ROWS:]:
            self.alert_events(alert)
        self.certificates()
        return self.rows

    def device_info(self, machine: dict) -> None:
        users = [{"UserName": u, "DomainName": "CONTOSO"} for u in self.store.machine_users.get(machine["id"], [])]
        self.add("DeviceInfo", machine, when=self.now - dt.timedelta(minutes=self.rng.uniform(1, 60)),
                 ClientVersion=machine["agentVersion"], PublicIP=machine["lastExternalIpAddress"],
                 OSArchitecture=machine["osArchitecture"], OSPlatform=machine["osPlatform"],
                 JoinType="Hybrid Azure AD Join" if machine["isAadJoined"] else "Domain Joined",
                 AadDeviceId=machine["aadDeviceId"] or "", LoggedOnUsers=json.dumps(users),
                 OSVersion=machine["version"] or "", MachineGroup=machine["rbacGroupName"],
                 OnboardingStatus=machine["onboardingStatus"], DeviceCategory="Endpoint",
                 DeviceType="Server" if "Server" in machine["osPlatform"] else "Workstation",
                 SensorHealthState=machine["healthStatus"], ExposureLevel=machine["exposureLevel"],
                 AssetValue=machine["deviceValue"], DeviceManualTags=json.dumps(machine["machineTags"]),
                 OSBuild=machine["osBuild"], IsAzureADJoined=machine["isAadJoined"], IsInternetFacing=False,
                 IsExcluded=False, ConnectivityType="Standard", AdditionalFields="{}")
        for address in machine["ipAddresses"]:
            self.add("DeviceNetworkInfo", machine, when=self.now - dt.timedelta(minutes=self.rng.uniform(1, 60)),
                     NetworkAdapterName="Ethernet" if address["type"] == "Ethernet" else "Wi-Fi",
                     MacAddress=address["macAddress"], NetworkAdapterType=address["type"],
                     NetworkAdapterStatus=address["operationalStatus"],
                     IPAddresses=json.dumps([{"IPAddress": address["ipAddress"], "SubnetPrefix": 24,
                                              "AddressType": "Private"}]),
                     DnsAddresses=json.dumps(["10.0.0.2"]), DefaultGateways=json.dumps(["10.0.0.1"]),
                     ConnectedNetworks=json.dumps([{"Name": "contoso.local", "Category": "Domain"}]))

    def scenarios(self, machine: dict) -> None:
        """One event or a few per template purpose on this machine."""
        user = self.user(machine)
        host = machine["computerDnsName"].split(".", 1)[0]
        tool = self.rng.choice(self.files)
        explorer = self.initiating(machine, "explorer.exe", "C:\\Windows", "C:\\Windows\\Explorer.EXE",
                                   parent="userinit.exe")
        cmd = self.initiating(machine, "cmd.exe", SYS32, '"cmd.exe" /c whoami', parent="explorer.exe")
        services = self.initiating(machine, "services.exe", SYS32, "C:\\Windows\\system32\\services.exe",
                                   parent="wininit.exe", system=True)
        svchost = self.initiating(machine, "svchost.exe", SYS32, "svchost.exe -k netsvcs -p", parent="services.exe",
                                  system=True, pid=self.rng.randrange(600, 9000))
        # lateral movement: private peers, SMB fan-out, management ports, credential dumping
        for peer in PRIVATE_PEERS:
            self.network(machine, peer, 445, svchost)
            self.network(machine, peer, self.rng.choice([3389, 135, 22]), cmd)
        self.process(machine, "procdump64.exe", "C:\\Users\\Public\\Downloads",
                     "procdump64.exe -accepteula -ma lsass.exe C:\\Users\\Public\\lsass.dmp", initiating=cmd)
        # persistence
        self.add("DeviceEvents", machine, "ScheduledTaskCreated", **explorer,
                 AdditionalFields=json.dumps({"TaskName": "\\Updater", "TaskContent": "<Exec>agent.bin</Exec>"}))
        reg = self.initiating(machine, "reg.exe", SYS32, "reg add HKCU\\Software\\Microsoft\\Windows\\CurrentVersion"
                              "\\Run /v Updater /d C:\\ProgramData\\tmp\\agent.bin", parent="cmd.exe")
        self.add("DeviceRegistryEvents", machine, "RegistryValueSet", **reg,
                 RegistryKey="HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
                 RegistryValueType="String", RegistryValueName="Updater",
                 RegistryValueData="C:\\ProgramData\\tmp\\agent.bin")
        self.file_event(machine, "FileCreated", f"C:\\Users\\{user['accountName']}\\{STARTUP}", "updater.lnk",
                        explorer)
        service_key = f"{SERVICES_KEY}\\UpdaterSvc"
        self.add("DeviceRegistryEvents", machine, "RegistryKeyCreated", **services, RegistryKey=service_key)
        self.add("DeviceRegistryEvents", machine, "RegistryValueSet", **services, RegistryKey=service_key,
                 RegistryValueName="ImagePath", RegistryValueType="ExpandString",
                 RegistryValueData="C:\\ProgramData\\tmp\\agent.bin", PreviousRegistryValueData="")
        self.file_event(machine, "FileModified", "C:\\Program Files\\Contoso\\Agent", "contoso.exe", cmd)
        for action, extra in (("UserAccountCreated", {"AccountName": "svc_backup"}),
                              ("SecurityGroupCreated", {"AccountName": "Backup Operators 2",
                                                        "AdditionalFields": json.dumps({"GroupName": "BackupOps2"})}),
                              ("UserAccountAddedToLocalGroup", {"AccountName": "svc_backup",
                                                                "AdditionalFields": json.dumps(
                                                                    {"GroupName": "Administrators"})})):
            self.add("DeviceEvents", machine, action, **cmd, AccountDomain=host.upper(),
                     AccountSid=f"S-1-5-21-1004336348-1177238915-682003330-{self.rng.randrange(1100, 1999)}",
                     InitiatingProcessLogonId=self.rng.randrange(100_000, 999_999), **extra)
        netsh = self.initiating(machine, "netsh.exe", SYS32, "netsh advfirewall firewall add rule name=allow-4444 "
                                "dir=in action=allow protocol=TCP localport=4444", parent="cmd.exe")
        self.add("DeviceRegistryEvents", machine, "RegistryValueSet", **netsh, RegistryKey=FIREWALL_KEY,
                 RegistryValueName="{allow-4444}", RegistryValueType="String",
                 RegistryValueData="v2.30|Action=Allow|Active=TRUE|Dir=In|Protocol=6|LPort=4444|")
        self.file_event(machine, "FileModified", f"{SYS32}\\drivers\\etc", "hosts", cmd)
        # file origin and process details
        browser = self.initiating(machine, "msedge.exe", "C:\\Program Files (x86)\\Microsoft\\Edge\\Application",
                                  "msedge.exe --single-argument https://files-share0.example/tool.exe")
        self.file_event(machine, "FileCreated", f"C:\\Users\\{user['accountName']}\\Downloads", tool["fileName"],
                        browser, file=tool, FileOriginUrl=f"https://files-share0.example/{tool['fileName']}",
                        FileOriginIP="203.0.113.25")
        self.process(machine, tool["fileName"], f"C:\\Users\\{user['accountName']}\\Downloads",
                     f"{tool['fileName']} /install", initiating=explorer, file=tool, signature="Unsigned")
        loader = self.initiating(machine, tool["fileName"], f"C:\\Users\\{user['accountName']}\\Downloads",
                                 f"{tool['fileName']} /install", sha1=tool["sha1"], md5=tool["md5"])
        for folder, dll in ((SYS32, "wininet.dll"), ("C:\\ProgramData\\tmp", "payload.dll")):
            self.add("DeviceImageLoadEvents", machine, "ImageLoaded", **loader, FileName=dll,
                     FolderPath=f"{folder}\\{dll}",
                     SHA1=self._hex(160), SHA256=self._hex(256), MD5=self._hex(128),
                     FileSize=self.rng.randrange(20_000, 900_000))
        ps_parent = self.initiating(machine, "wscript.exe", SYS32, "wscript.exe C:\\Users\\Public\\run.vbs",
                                    parent="explorer.exe")
        self.process(machine, "powershell.exe", POWERSHELL, "powershell.exe -ExecutionPolicy Bypass -File run.ps1",
                     initiating=ps_parent, signature="Unsigned")
        self.process(machine, "powershell.exe", POWERSHELL, f"powershell.exe -EncodedCommand {ENCODED}",
                     initiating=cmd)
        external = self.rng.choice(self.store._ip_pool)
        for _ in range(3):
            self.network(machine, external, 443, browser, url="cdn-update1.example")
        self.network(machine, "10.0.0.2", 53, svchost, url="cdn-update1.example",
                     action="DnsConnectionInspected",
                     fields={"query": quote("cdn-update1.example"), "direction": "Outbound"})
        # privilege escalation: a local administrator account signing in
        self.add("DeviceLogonEvents", machine, "LogonSuccess", **services, LogonType="Interactive",
                 AccountDomain=host, AccountName="localadmin", AccountSid=f"S-1-5-21-99-{self.rng.randrange(500, 999)}",
                 Protocol="Negotiate", IsLocalAdmin=True, LogonId=self.rng.randrange(100_000, 999_999))
        self.add("DeviceLogonEvents", machine, "LogonSuccess", **services, LogonType="RemoteInteractive",
                 AccountDomain=user["accountDomain"], AccountName=user["accountName"], AccountSid=user["accountSid"],
                 Protocol="Kerberos", IsLocalAdmin=False, RemoteIP=PRIVATE_PEERS[1], RemoteIPType="Private",
                 RemotePort=self.rng.randrange(49152, 65535), LogonId=self.rng.randrange(100_000, 999_999))
        # tampering and cover-up
        for name, folder, command in TAMPERING:
            actor = self.initiating(machine, name, folder, command, parent="cmd.exe")
            self.process(machine, "net1.exe" if name == "net.exe" else "conhost.exe", SYS32,
                         "conhost.exe 0xffffffff -ForceV1", initiating=actor)
        self.process(machine, "wevtutil.exe", SYS32, "wevtutil.exe cl Security", initiating=cmd)
        self.process(machine, "powershell.exe", POWERSHELL, "powershell.exe Clear-EventLog -LogName System",
                     initiating=cmd)
        self.file_event(machine, "FileDeleted", "C:\\Users\\Public\\Downloads", tool["fileName"], cmd, file=tool)

    def file_event(self, machine: dict, action: str, folder: str, name: str, initiating: dict, *,
                   file: dict | None = None, **extra) -> dict:
        file = file or {}
        return self.add("DeviceFileEvents", machine, action, FileName=name, FolderPath=f"{folder}\\{name}",
                        SHA1=file.get("sha1") or self._hex(160), SHA256=file.get("sha256") or "",
                        MD5=file.get("md5") or self._hex(128), FileSize=file.get("size") or self.rng.randrange(100, 10**6),
                        RequestProtocol="Local", **initiating, **extra)

    def alert_events(self, alert: dict) -> None:
        """The alert's evidence as the events the sensor recorded around its creation time."""
        machine = self.store.machines_by_id.get(alert["machineId"])
        if machine is None:
            return
        created, _ = parse_datetime(alert["alertCreationTime"])
        if created < self.now - dt.timedelta(days=30):
            return
        when = created - dt.timedelta(seconds=30)
        explorer = self.initiating(machine, "explorer.exe", "C:\\Windows", "C:\\Windows\\Explorer.EXE", when=when)
        for ev in self.store.evidence.get(alert["id"], ()):
            kind = ev["entityType"]
            if kind == "Process" and ev["sha1"]:
                file = self.store.files.get(ev["sha1"], {})
                self.process(machine, ev["fileName"], ev["filePath"], ev["processCommandLine"], initiating=explorer,
                             file=file, when=when, signature="Unsigned")
            elif kind == "File" and ev["sha1"]:
                file = self.store.files.get(ev["sha1"], {})
                self.file_event(machine, "FileCreated", ev["filePath"], ev["fileName"], explorer, file=file)
                self.rows["DeviceFileEvents"][-1]["Timestamp"] = when
            elif kind == "Ip" and ev["ipAddress"]:
                self.network(machine, ev["ipAddress"], 443, explorer)["Timestamp"] = when
            elif kind == "Url" and ev["url"]:
                self.network(machine, "203.0.113.10", 443, explorer, url=ev["url"])["Timestamp"] = when
            elif kind == "Registry":
                self.add("DeviceRegistryEvents", machine, "RegistryValueSet", when=when, **explorer,
                         RegistryKey=f"{ev['registryHive']}\\{ev['registryKey']}", RegistryValueName="Updater",
                         RegistryValueType=ev["registryValueType"], RegistryValueData=ev["registryValue"])
            elif kind == "User" and ev["accountName"]:
                self.add("DeviceLogonEvents", machine, "LogonSuccess", when=when, **explorer,
                         LogonType="Interactive", AccountDomain="contoso", AccountName=ev["accountName"],
                         AccountSid=ev["userSid"], Protocol="Kerberos", IsLocalAdmin=False,
                         LogonId=self.rng.randrange(100_000, 999_999))

    def certificates(self) -> None:
        """Signer details for every process image seen, as DeviceFileCertificateInfo keeps them."""
        seen: dict[str, dict] = {}
        for row in self.rows["DeviceProcessEvents"]:
            seen.setdefault(row["SHA1"], row)
        for sha1, row in seen.items():
            microsoft = row["FolderPath"].lower().startswith("c:\\windows")
            self.add("DeviceFileCertificateInfo", {"id": row["DeviceId"], "computerDnsName": row["DeviceName"]},
                     when=row["Timestamp"], SHA1=sha1, IsSigned=microsoft, IsTrusted=microsoft,
                     IsRootSignerMicrosoft=microsoft, SignatureType="Embedded" if microsoft else "",
                     Signer="Microsoft Windows" if microsoft else "",
                     Issuer="Microsoft Windows Production PCA 2011" if microsoft else "",
                     CertificateExpirationTime=self.now + dt.timedelta(days=200) if microsoft else None)


def seed_rows(store: Store, seed: int) -> dict[str, list[dict]]:
    """Every table's rows (dicts keyed by column; absent string columns read as empty)."""
    return _Seeder(store, seed).build()


def table_rows(table: str, rows: list[dict]) -> Iterator[dict]:
    """Rows with every column of the table, absent strings empty (as Microsoft reports them), others null."""
    columns = TABLES[table]
    for row in rows:
        yield {name: row.get(name, "" if kind == "string" else None) for name, kind in columns}

"""Shared fixtures: run the plugin's main() with `demisto` patched, as XSOAR integrations are tested."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import demistomock
import MicrosoftDefenderForEndpoint as mde

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CLIENT_SECRET = "s3cr3t-Value~0123456789abcdefghij"
LOGIN = "https://login.microsoftonline.com"
API = "https://api.securitycenter.microsoft.com/api"
MSAL_ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "https_proxy",
            "HTTP_PROXY", "http_proxy", "MSAL_FORCE_REGION")


def make_jwt(claims: dict | None = None) -> str:
    """An unsigned JWT-shaped token with the given claims (the plugin only reads claims)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    body = {"aud": "https://securitycenter.onmicrosoft.com/windowsatpservice", "roles": ["Alert.Read.All"],
            "exp": int(time.time()) + 3600, **(claims or {})}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(body)}.c2lnbmF0dXJl"


def client_credentials_params(**extra: Any) -> dict:
    return {"auth_flow": "Client Credentials", "endpoint_type": "Worldwide",
            "_auth_id_encrypted": {"identifier": "", "password": CLIENT_ID},
            "_tenant_id_encrypted": {"identifier": "", "password": TENANT},
            "credentials": {"identifier": "", "password": CLIENT_SECRET}, **extra}


class FakeClock(mde.Clock):
    """The plugin's time in tests: starts at the real time (tokens and relative dates stay sensible), moves only
    when the plugin sleeps or a test advances it, and records every sleep."""

    def __init__(self, start: float | None = None):
        self.time = time.time() if start is None else float(start)
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds

    def advance(self, seconds: float) -> None:
        self.time += seconds


@dataclass
class Run:
    results: list = field(default_factory=list)
    logs: list = field(default_factory=list)
    incidents: list = field(default_factory=list)
    metrics: list = field(default_factory=list)  # API-execution-metrics entries (type 19), kept apart from results

    @property
    def errors(self) -> list[str]:
        return [r["Contents"] for r in self.results if isinstance(r, dict) and r.get("Type") == 4]

    @property
    def entry(self) -> Any:
        assert not self.errors, self.errors
        assert len(self.results) == 1, self.results
        return self.results[0]

    @property
    def error(self) -> str:
        assert len(self.errors) == 1, self.results
        return self.errors[0]

    @property
    def context(self) -> dict:
        return self.entry["EntryContext"]


class Xsoar:
    """Runs main() like the platform does: a fresh command each time, the integration context and last
    run kept between runs (as separate processes would see them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path):
        self.monkeypatch = monkeypatch
        self.context: dict = {}
        self.context_version = 0
        self.before_context_write: Callable[[], None] | None = None  # e.g. another run writing first
        self.last_run: dict = {}
        self.params: dict = client_credentials_params()
        self.clock = FakeClock()
        self.server_version = "8.9.0"  # what demisto.demistoVersion() reports
        self.sleeps = self.clock.sleeps
        self.tmp_path = tmp_path
        monkeypatch.chdir(tmp_path)
        for name in MSAL_ENV:
            monkeypatch.delenv(name, raising=False)

    def run(self, command: str, args: dict | None = None, params: dict | None = None) -> Run:
        run = Run()
        mp = self.monkeypatch
        mp.setattr(demistomock, "command", lambda: command)
        mp.setattr(demistomock, "params", lambda: params if params is not None else self.params)
        mp.setattr(demistomock, "args", lambda: dict(args or {}))
        mp.setattr(demistomock, "results", lambda entry: (
            run.metrics if isinstance(entry, dict) and entry.get("Type") == 19 else run.results).append(entry))
        mp.setattr(demistomock, "demistoVersion", lambda: {"version": self.server_version, "buildNumber": "1"})
        mp.setattr(demistomock, "getIntegrationContext", lambda: json.loads(json.dumps(self.context)))
        mp.setattr(demistomock, "setIntegrationContext", self._set_context)
        mp.setattr(demistomock, "getIntegrationContextVersioned", self._get_context_versioned)
        mp.setattr(demistomock, "setIntegrationContextVersioned", self._set_context_versioned)
        mp.setattr(demistomock, "getLastRun", lambda: json.loads(json.dumps(self.last_run)))
        mp.setattr(demistomock, "setLastRun", self._set_last_run)
        mp.setattr(demistomock, "incidents", lambda incidents: run.incidents.extend(incidents))
        mp.setattr(demistomock, "investigation", lambda: {"id": "inv1"})
        mp.setattr(demistomock, "uniqueFile", lambda: "file1")
        for level in ("debug", "info", "error"):
            mp.setattr(demistomock, level, lambda msg, *a, _l=level: run.logs.append(f"{_l}: {msg}"))
        mde.main(clock=self.clock)
        return run

    def _set_context(self, context: dict) -> None:
        self.context = json.loads(json.dumps(context))
        self.context_version += 1

    def _get_context_versioned(self, refresh: bool = False) -> dict:
        return {"context": json.loads(json.dumps(self.context)), "version": self.context_version}

    def _set_context_versioned(self, context: dict, version: int = -1, sync: bool = False) -> None:
        if self.before_context_write:
            hook, self.before_context_write = self.before_context_write, None
            hook()
        if version != -1 and version != self.context_version:
            raise ValueError(f"version {version} is stale (stored {self.context_version})")
        self._set_context(context)

    def _set_last_run(self, last_run: dict) -> None:
        self.last_run = json.loads(json.dumps(last_run))


@pytest.fixture
def xsoar(monkeypatch, tmp_path) -> Xsoar:
    return Xsoar(monkeypatch, tmp_path)


def mock_entra(requests_mock, login: str = LOGIN, tenant: str = TENANT, token: str | None = None,
               expires_in: int = 3599, **token_response: Any):
    """The Entra endpoints msal calls: OpenID discovery, then the token endpoint (returned)."""
    base = f"{login}/{tenant}"
    requests_mock.get(f"{base}/v2.0/.well-known/openid-configuration", json={
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize", "token_endpoint": f"{base}/oauth2/v2.0/token",
        "issuer": f"{login}/{tenant}/v2.0", "tenant_region_scope": "WW"})
    body = {"token_type": "Bearer", "expires_in": expires_in, "access_token": token or make_jwt(), **token_response}
    return requests_mock.post(f"{base}/oauth2/v2.0/token", json=body)


def form(request) -> dict[str, str]:
    """The form fields of a token request, parsed (never compared as raw strings)."""
    from urllib.parse import parse_qsl

    return dict(parse_qsl(request.text))


@pytest.fixture
def entra(requests_mock):
    return mock_entra(requests_mock)


# ---- which context paths the tests produce ------------------------------------------------------
# Every output path the yml declares must be produced by at least one test run through main();
# checked at the end of a full run (see pytest_sessionfinish).

TESTS_DIR = Path(__file__).resolve().parent
PRODUCED_PATHS: set[str] = set()


def context_paths(value: Any, prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    if isinstance(value, dict):
        for key, item in value.items():
            key = key.split("(", 1)[0].strip()
            paths |= context_paths(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for item in value:
            paths |= context_paths(item, prefix)
    return paths


_original_run = Xsoar.run


def _recording_run(self: Xsoar, *args: Any, **kwargs: Any) -> Run:
    run = _original_run(self, *args, **kwargs)
    for entry in run.results:
        if isinstance(entry, dict) and entry.get("EntryContext"):
            PRODUCED_PATHS.update(context_paths(entry["EntryContext"]))
    return run


Xsoar.run = _recording_run  # type: ignore[method-assign]


def declared_output_paths() -> dict[str, set[str]]:
    import pathlib

    import yaml

    doc = yaml.safe_load((pathlib.Path(__file__).parent.parent / "MicrosoftDefenderForEndpoint.yml").read_text())
    # A contract path the API has no data for is declared for compatibility and says so ("Always empty: ...").
    return {c["name"]: {o["contextPath"] for o in c.get("outputs") or []
                        if not str(o.get("description", "")).startswith("Always empty")}
            for c in doc["script"]["commands"]}


DESELECTED: list = []  # items -k, -m, --deselect or --lf left out of this run


def pytest_deselected(items) -> None:
    DESELECTED.extend(items)


def is_full_run(*, collect_only: bool, args: list[str], deselected: int, collected_files: set[Path],
                test_files: set[Path]) -> bool:
    """A run of every test: every test file collected, none narrowed to node ids (`file.py::test`), nothing
    deselected (-k, -m, --deselect, --lf), and not --collect-only."""
    return (not collect_only and deselected == 0 and not any("::" in arg for arg in args)
            and collected_files == test_files)


def pytest_sessionfinish(session, exitstatus):
    """Fails a full, passing run when a declared output path is produced by no test (other runs are not checked:
    a subset cannot produce every path)."""
    config = session.config
    if exitstatus != 0 or not is_full_run(collect_only=config.option.collectonly, args=config.args,
                                          deselected=len(DESELECTED),
                                          collected_files={p.resolve() for p in {i.path for i in session.items}},
                                          test_files=set(TESTS_DIR.glob("test_*.py"))):
        return
    declared = declared_output_paths()
    missing = sorted({f"{name}: {path}" for name, paths in declared.items() for path in paths - PRODUCED_PATHS})
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if missing:
        reporter.write_line(f"{len(missing)} declared output paths are produced by no test:", red=True)
        for line in missing:
            reporter.write_line(f"  {line}")
        session.exitstatus = 1
    else:
        reporter.write_line(f"full run: all {len(set().union(*declared.values()))} declared output paths produced")


# ---- end-to-end: one emulator per test session ------------------------------------------------------


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    from e2e import Lab

    from lab.emulator import Emulator
    from lab.instances import cli_env, write_instances
    from lab.runner import Mde

    workdir = tmp_path_factory.mktemp("lab")
    with Emulator(machines=12_000, alerts=300, workdir=workdir / "emulator",
                  extra_args=["--action-delay", "2"]) as emulator:
        instances = write_instances(emulator.ready, workdir / "instances")
        yield Lab(emulator, instances, Mde(state_dir=workdir / "state", env=cli_env(emulator.ready),
                                          output_dir=workdir / "files", timeout=300))

"""The example instance files in the README load and select the flow they describe."""

from __future__ import annotations

from pathlib import Path

import pytest

import MicrosoftDefenderForEndpoint as mde
from xsoar_local.instance import load_instance
from xsoar_local.yml import load_integration

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {"MDE_CLIENT_SECRET": "x" * 10, "MDE_CERT_THUMBPRINT": "AB:" * 19 + "AB",
               "MDE_CERT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY----- AAAA -----END PRIVATE KEY-----",
               "MDE_AUTH_CODE": "code", "MDE_XSOAR_APP_ID": "reg", "MDE_XSOAR_APP_TOKEN": "token",
               "MDE_XSOAR_APP_KEY": "a2V5"}


@pytest.mark.parametrize("name, flow, endpoint", [
    ("client-credentials", mde.FLOW_CLIENT_CREDENTIALS, "Worldwide"),
    ("certificate", mde.FLOW_CLIENT_CREDENTIALS, "Worldwide"),
    ("authorization-code", mde.FLOW_AUTH_CODE, "Worldwide"),
    ("xsoar-app", mde.FLOW_XSOAR_APP, "Worldwide"),
    ("managed-identity", mde.FLOW_MANAGED_IDENTITY, "US GCC-High"),
])
def test_example_instance_selects_its_flow(name, flow, endpoint):
    integration = load_integration(ROOT / "MicrosoftDefenderForEndpoint.yml")
    instance = load_instance(ROOT / "examples" / "instances" / f"{name}.yml", integration, environ=ENVIRONMENT)
    settings = mde.auth_settings_from_params(instance.params)
    assert settings.flow == flow
    assert settings.cloud == mde.CLOUDS[endpoint]
    if name == "certificate":
        assert settings.thumbprint == "AB" * 20 and settings.private_key.startswith("-----BEGIN PRIVATE KEY-----\n")

"""Instance files for each authentication flow, pointed at a running emulator.

They hold the same parameters an XSOAR instance would, with Endpoint Type "Custom" so the API and
login hosts are the emulator's; the emulator's CA is trusted through REQUESTS_CA_BUNDLE, as a
corporate proxy's CA would be. The client secret is read from the environment, to show how
secrets stay out of instance files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

SECRET_ENV = "MDE_CLIENT_SECRET"


def _custom_cloud(ready: dict) -> dict[str, Any]:
    return {"endpoint_type": "Custom", "url": ready["api_url"], "login_url": ready["login_url"],
            "graph_url": ready.get("graph_url", ready["api_url"])}


def _secret(value: str) -> dict[str, str]:
    return {"identifier": "", "password": value}


def instance_params(ready: dict) -> dict[str, dict[str, Any]]:
    """Instance name -> parameters, one per flow (plus the certificate variant and a limited app)."""
    tenant = ready["tenant_id"]
    clients = ready["clients"]
    cert = clients["certificate"]
    return {
        "client-credentials": {"auth_flow": "Client Credentials", "_auth_id_encrypted": _secret(clients["full"]["client_id"]),
                               "_tenant_id_encrypted": _secret(tenant), "credentials": _secret("${" + SECRET_ENV + "}")},
        "certificate": {"auth_flow": "Client Credentials", "_auth_id_encrypted": _secret(cert["client_id"]),
                        "_tenant_id_encrypted": _secret(tenant),
                        "creds_certificate": {"identifier": cert["thumbprint"],
                                              "password": Path(cert["private_key_path"]).read_text()}},
        "authorization-code": {"auth_flow": "Authorization Code",
                               "_auth_id_encrypted": _secret(clients["authcode"]["client_id"]),
                               "_tenant_id_encrypted": _secret(tenant),
                               "credentials": _secret(clients["authcode"]["client_secret"]),
                               "redirect_uri": clients["authcode"]["redirect_uri"], "auth_code": _secret("")},
        "xsoar-app": {"auth_flow": "Cortex XSOAR app",
                      "_auth_id_encrypted": _secret(f"{ready['oproxy']['registration_id']}@{ready['oproxy_url']}"),
                      "_tenant_id_encrypted": _secret(ready["oproxy"]["token"]),
                      "credentials": _secret(ready["oproxy"]["key"])},
        "managed-identity": {"auth_flow": "Azure Managed Identities",
                             "managed_identities_client_id": _secret(ready["managed_identity"]["user_assigned_client_id"])},
        "limited": {"auth_flow": "Client Credentials", "_auth_id_encrypted": _secret(clients["limited"]["client_id"]),
                    "_tenant_id_encrypted": _secret(tenant), "credentials": _secret(clients["limited"]["client_secret"])},
        # granted the Defender API's AdvancedQuery.Read.All but not Graph's ThreatHunting.Read.All
        "defender-hunting": {"auth_flow": "Client Credentials",
                             "_auth_id_encrypted": _secret(clients["defender-hunting"]["client_id"]),
                             "_tenant_id_encrypted": _secret(tenant),
                             "credentials": _secret(clients["defender-hunting"]["client_secret"])},
    }


def write_instances(ready: dict, directory: Path) -> dict[str, Path]:
    """Writes one instance file per flow (mode 0600: they hold credentials) and returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, params in instance_params(ready).items():
        env = {"REQUESTS_CA_BUNDLE": ready["ca_bundle"]}
        if params["auth_flow"] == "Azure Managed Identities":
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = ready["imds_url"]
        document = {"name": name, "env": env, "params": {**params, **_custom_cloud(ready)}}
        path = directory / f"{name}.yml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        os.chmod(path, 0o600)
        paths[name] = path
    return paths


def cli_env(ready: dict) -> dict[str, str]:
    """Environment variables the instance files refer to."""
    return {SECRET_ENV: ready["clients"]["full"]["client_secret"]}


def set_auth_code(path: Path, code: str) -> None:
    document = yaml.safe_load(path.read_text())
    document["params"]["auth_code"] = _secret(code)
    path.write_text(yaml.safe_dump(document, sort_keys=False))

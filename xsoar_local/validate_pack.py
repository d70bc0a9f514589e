"""`python -m xsoar_local.validate_pack --sdk .venv-sdk/bin/demisto-sdk`: XSOAR's validator on the generated pack.

demisto-sdk expects a content repository (a git checkout with `Packs/` and an `origin` remote), so the pack is
copied into a scratch repository under `dist/` whose `origin` holds no pack: to the validator the pack is new.
Every validation the installed demisto-sdk has is selected except those in SKIPPED (they need the network, the
content graph or the content repository's own files), and the run fails on any error.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from xsoar_local.pack import PACK_NAME

# Validations that cannot run offline on a pack outside XSOAR's content repository, and why.
NEEDS_DOCKER_HUB = {"DO103", "DO105", "DO106"}
NEEDS_CONTENT_REPO_LISTS = {  # approved categories, tags, use cases, modules and compliant policies live in demisto/content
    "AG102", "BA112", "BA129", "IN104", "PA100", "PA103", "PA104", "PA119", "PA120",
}
NEEDS_RELEASED_VERSION = {"PA114"}  # compares the version with the previously released pack
SKIPPED = {
    **{code: "queries Docker Hub for the image's tags" for code in NEEDS_DOCKER_HUB},
    **{code: "reads approved lists fetched from the demisto/content repository" for code in NEEDS_CONTENT_REPO_LISTS},
    **{code: "compares with the previously released version of the pack" for code in NEEDS_RELEASED_VERSION},
}
GRAPH_USE = re.compile(r"self\.graph\b|ensure_graph_initialized|using_graph")  # needs a neo4j content graph (docker)
GIT = ["git", "-c", "user.email=validate@localhost", "-c", "user.name=validate", "-c", "init.defaultBranch=master"]


def sdk_validators(sdk_python: Path) -> dict[str, list[Path]]:
    """Error code -> validator modules of the installed demisto-sdk (some codes have several)."""
    package = subprocess.run([str(sdk_python), "-c", "import demisto_sdk, os; print(os.path.dirname(demisto_sdk.__file__))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    folder = Path(package) / "commands" / "validate" / "validators"
    found: dict[str, list[Path]] = {}
    for module in sorted(folder.glob("*_validators/*.py")):
        match = re.match(r"([A-Z]{2}\d{3})_", module.name)
        if match:
            found.setdefault(match.group(1), []).append(module)
    return found


def selected_codes(validators: dict[str, list[Path]]) -> tuple[list[str], dict[str, str]]:
    skipped = dict(SKIPPED)
    for code, modules in validators.items():
        uses_graph = code.startswith("GR") or any(GRAPH_USE.search(m.read_text(encoding="utf-8")) for m in modules)
        if code not in skipped and uses_graph:
            skipped[code] = "queries the content graph (a neo4j database in docker)"
    return sorted(set(validators) - set(skipped)), skipped


def scratch_content_repo(pack: Path, root: Path) -> Path:
    """A git repository whose `origin` has no pack, holding the pack as a new commit."""
    shutil.rmtree(root, ignore_errors=True)
    repo, origin = root / "content", root / "origin.git"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("Scratch content repository for demisto-sdk validate.\n")
    run = lambda *args: subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("add", "-A")
    run("commit", "-q", "-m", "base")
    run("clone", "-q", "--bare", ".", str(origin))
    run("remote", "add", "origin", str(origin))
    run("fetch", "-q", "origin")
    run("checkout", "-q", "-b", "pack")
    shutil.copytree(pack, repo / "Packs" / pack.name)
    run("add", "-A")
    run("commit", "-q", "-m", "pack")
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xsoar_local.validate_pack", description=__doc__.splitlines()[0])
    parser.add_argument("--sdk", required=True, type=Path, help="the demisto-sdk executable (in its own venv)")
    parser.add_argument("--dist", default=Path("dist"), type=Path, help="where `make xsoar-pack` wrote Packs/")
    options = parser.parse_args(argv)
    pack = options.dist / "Packs" / PACK_NAME
    if not (pack / "pack_metadata.json").exists():
        print(f"error: no pack at {pack}; run `make xsoar-pack` first", file=sys.stderr)
        return 2
    codes, skipped = selected_codes(sdk_validators(options.sdk.parent / "python"))
    print(f"running {len(codes)} validations; skipping {len(skipped)}:")
    for code, reason in sorted(skipped.items()):
        print(f"  {code}: {reason}")
    repo = scratch_content_repo(pack.resolve(), (options.dist / "validate").resolve())
    command = [str(options.sdk.resolve()), "validate", "-i", f"Packs/{PACK_NAME}", "-sv", ",".join(codes)]
    env = {**os.environ, "DEMISTO_SDK_IGNORE_CONTENT_WARNING": "true"}
    return subprocess.run(command, cwd=repo, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

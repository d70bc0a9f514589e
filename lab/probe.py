"""`python -m lab.probe [mde options] COMMAND [name=value ...]`: run one command's plugin code the way `mde`
does, then print (JSON) how big its entries are, as the platform would receive them. Run as its own process
by the bench, so the process's peak memory is the cost of the command and of handing over its entries."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from xsoar_local import cli
from xsoar_local.cache import cache_dir_for
from xsoar_local.state import default_state_root
from xsoar_local.yml import load_integration


def main(argv: list[str]) -> int:
    options = cli.build_parser().parse_intermixed_args(argv)
    cache_dir = cache_dir_for(Path(options.state_dir) if options.state_dir else default_state_root())
    integration = load_integration(options.integration or cli.find_default_integration(), cache_dir)
    command = cli.find_command(integration, options.command)
    args = cli.parse_command_args(command, options.args)
    session = cli.Session(options, integration, cache_dir=cache_dir, sleep=time.sleep, clock=time.monotonic)
    with session.prepared() as instance:
        entries = session.run_plugin(instance, command.name, args).entries
    before_serializing = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({**measure(entries), "peak_mib_before_serializing": before_serializing}))
    return 0


def measure(entries: list) -> dict:
    sizes = {"entries": len(entries), "entry_bytes": 0, "human_readable_bytes": 0, "errors": [], "ids": {}}
    for entry in entries:
        # What demisto.results() hands the platform: the whole entry as one JSON document. json.dumps escapes
        # everything to ASCII, so its length in characters is its size in bytes (no encoded copy needed).
        sizes["entry_bytes"] = max(sizes["entry_bytes"], len(json.dumps(entry, default=str)))
        if not isinstance(entry, dict):
            continue
        if entry.get("Type") == cli.ENTRY_ERROR:
            sizes["errors"].append(str(entry.get("Contents"))[:300])
        sizes["human_readable_bytes"] = max(sizes["human_readable_bytes"],
                                            len(str(entry.get("HumanReadable") or "").encode()))
        for path, value in cli.merge_context([entry]).items():
            items = value if isinstance(value, list) else [value]
            ids = [str(item.get("ID")) for item in items if isinstance(item, dict) and item.get("ID")]
            sizes["ids"][path] = {"listed": len(ids), "unique": len(set(ids))}
    return sizes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

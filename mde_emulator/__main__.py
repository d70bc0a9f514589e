"""Command line: `mde-emulator --port 0 --seed 1 --machines 2000 --alerts 500 --ready-file PATH ...`.

Starts the emulator on 127.0.0.1 over HTTPS, writes the ready file (JSON, mode 0600, atomically) once it is
listening, and runs until SIGTERM or SIGINT (then removes the ready file and, if it made it, the temp state dir).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from .server import ACTION_OUTCOMES, EmulatorServer, Options


def write_ready_file(path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=path.parent)  # mkstemp creates the file 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mde-emulator", description="HTTPS emulator of Microsoft Entra ID, the XSOAR "
                                "oproxy, Azure IMDS and the Microsoft Defender for Endpoint API (127.0.0.1 only).")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated data")
    p.add_argument("--machines", type=int, default=2000, help="number of machines to generate")
    p.add_argument("--alerts", type=int, default=500, help="number of alerts to generate")
    p.add_argument("--ready-file", type=Path, help="write the connection details (JSON, 0600) here when listening")
    p.add_argument("--state-dir", help="where to write ca.pem and the client certificate (default: a temp dir)")
    p.add_argument("--token-lifetime", type=_positive_int, default=3600, help="access token lifetime (seconds)")
    p.add_argument("--rate-limit-per-minute", type=_positive_int, default=None,
                   help="API calls per application and endpoint family per minute (default: unlimited)")
    p.add_argument("--rate-limit-window-seconds", type=float, default=60.0,
                   help="length of the rate-limit window (default 60)")
    p.add_argument("--action-delay", type=float, default=2.0,
                   help="seconds from a machine action's creation to its final status")
    p.add_argument("--action-outcome", choices=ACTION_OUTCOMES, default="Succeeded",
                   help="final status of machine actions")
    p.add_argument("--latency-ms", type=int, default=0, help="added latency per request")
    p.add_argument("--alert-stream", type=float, default=0.0, metavar="RATE",
                   help="add about RATE alerts per second while running")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = Options(port=args.port, seed=args.seed, machines=args.machines, alerts=args.alerts,
                      state_dir=args.state_dir, token_lifetime=args.token_lifetime,
                      rate_limit_per_minute=args.rate_limit_per_minute,
                      rate_limit_window_seconds=args.rate_limit_window_seconds, action_delay=args.action_delay,
                      action_outcome=args.action_outcome, latency_ms=args.latency_ms, alert_stream=args.alert_stream)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = EmulatorServer(options).start()
    except OSError as e:  # most often: the port is taken
        taken = e.errno == errno.EADDRINUSE
        print(f"mde-emulator: cannot listen on 127.0.0.1:{args.port}: "
              + ("the port is already in use (another mde-emulator?); choose another with --port, or --port 0 "
                 "for any free port" if taken else (e.strerror or str(e))), file=sys.stderr)
        return 1
    try:
        if args.ready_file:
            write_ready_file(args.ready_file, server.info)
        print(f"mde-emulator listening on {server.base_url}", flush=True)
        print(f"CA bundle: {server.ca_path}", flush=True)
        if args.ready_file:
            print(f"Ready file: {args.ready_file.resolve()}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if args.ready_file:  # its port and credentials are dead now
            args.ready_file.unlink(missing_ok=True)
    print("mde-emulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

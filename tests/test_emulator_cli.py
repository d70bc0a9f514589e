"""`mde-emulator`'s command line: what a user sees when it cannot start."""

import socket

from mde_emulator.__main__ import main


def test_a_port_in_use_is_a_clear_message_not_a_traceback(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["--port", str(port), "--machines", "1", "--alerts", "1", "--state-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == (f"mde-emulator: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
                   "mde-emulator?); choose another with --port, or --port 0 for any free port\n")

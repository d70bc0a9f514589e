"""The `mde` CLI against a fake integration: argument checks, entries, polling, files, fetch, state."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xsoar_local import cli

FAKE_YML = Path(__file__).parent / "fake_integration" / "FakeIntegration.yml"


class FakeClock:
    """Time only moves when the CLI sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("FAKE_SENTINEL", str(tmp_path / "imported"))
    monkeypatch.setenv("FAKE_URL", "https://fake.example")
    instance = tmp_path / "tenant.yml"
    instance.write_text("params:\n  url: ${FAKE_URL}\n")
    return tmp_path


def mde(env, capsys, *argv, clock=None, instance=True):
    clock = clock or FakeClock()
    base = ["--integration", str(FAKE_YML), "--state-dir", str(env / "state"), "--output-dir", str(env / "out")]
    if instance:
        base += ["--instance", str(env / "tenant.yml")]
    code = cli.main([*base, *argv], sleep=clock.sleep, clock=clock)
    out, err = capsys.readouterr()
    return code, out, err


def plugin_imported(env):
    return (env / "imported").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["fake-echo", "hi", "shade=dark"], "error: unknown argument 'shade' for fake-echo (allowed: message, color, colors, "
                                        "limit)"),
    (["fake-echo", "color=red"], "error: missing required argument message for fake-echo: The message to echo."),
    (["fake-echo", "hi", "color=Pink"], "error: color must be one of red, green, blue (got 'Pink')"),
    (["fake-echo", "hi", "colors=red,Pink"], "error: colors must be one of red, green, blue (got 'Pink')"),
    (["fake-echo", "hi", "message=again"], "error: argument message given twice"),
    (["fake-file", "bare"], "error: fake-file has no default argument for the bare value 'bare'; use name=value"),
    (["fake-ecko", "hi"], "error: unknown command 'fake-ecko' for Fake Integration; did you mean fake-echo, fake-error, "
                           "fake-poll?"),
])
def test_bad_arguments_exit_2_without_importing_the_plugin(env, capsys, argv, message):
    code, out, err = mde(env, capsys, *argv)
    assert (code, out, err.strip()) == (2, "", message)
    assert not plugin_imported(env)


def test_instance_is_required_to_run_a_command(env, capsys):
    code, _, err = mde(env, capsys, "fake-echo", "hi", instance=False)
    assert code == 2 and "--instance FILE is required" in err


def test_malformed_instance_exits_2_with_line(env, capsys):
    (env / "tenant.yml").write_text("params:\n  url: [x\n")
    code, _, err = mde(env, capsys, "test-module")
    assert code == 2 and err.startswith(f"error: {env / 'tenant.yml'}:3:1: malformed YAML")
    assert not plugin_imported(env)


def test_note_rendered_with_positional_argument_and_defaults(env, capsys):
    code, out, err = mde(env, capsys, "fake-echo", "hello world", "colors=red, blue")
    assert code == 0 and err == ""
    assert out.splitlines()[:5] == ["Echo", "====", "ID  Message", "--  -----------", "e1  hello world"]
    assert "See the docs <https://example.com/docs>." in out
    assert plugin_imported(env)


def test_json_prints_the_merged_entry_context(env, capsys):
    code, out, _ = mde(env, capsys, "fake-echo", "message=hi", "--json")
    assert code == 0
    assert json.loads(out) == {"Fake.Echo": {"ID": "e1", "Message": "hi", "Limit": "50", "Color": None}}


def test_raw_prints_contents_with_params_as_xsoar_passes_them(env, capsys):
    code, out, _ = mde(env, capsys, "fake-params", "--raw")
    assert code == 0
    assert json.loads(out) == {"url": "https://fake.example", "insecure": False, "max_fetch": "2"}


def test_api_metrics_are_shown_only_with_verbose(env, capsys):
    code, out, err = mde(env, capsys, "fake-metrics")
    assert code == 0 and "server 8.9.0" in out  # the local runtime reports a server version
    assert "metrics" not in (out + err).lower() and "APICallsCount" not in out

    code, out, err = mde(env, capsys, "--verbose", "fake-metrics")
    assert code == 0 and "[metrics] API calls: Successful 2, QuotaError 1" in err and "metrics" not in out.lower()

    code, out, _ = mde(env, capsys, "--json", "fake-metrics")
    assert json.loads(out) == {"Fake.Metrics": {"ID": "m1"}}


def test_error_entry_exits_1_on_stderr(env, capsys):
    code, out, err = mde(env, capsys, "fake-error")
    assert (code, out) == (1, "")
    assert "error: Failed to execute fake-error: the server said no" in err


def test_uncaught_exception_is_one_line_unless_verbose(env, capsys):
    code, out, err = mde(env, capsys, "fake-raise")
    assert (code, out, err) == (1, "", "error: RuntimeError: boom\n")
    code, _, err = mde(env, capsys, "--verbose", "fake-raise")
    assert code == 1 and "Traceback" in err and "[debug] running fake-raise" in err


def test_test_module(env, capsys):
    assert mde(env, capsys, "test-module")[:2] == (0, "ok\n")
    (env / "tenant.yml").write_text("params:\n  url: http://plain\n")
    code, out, err = mde(env, capsys, "test-module")
    assert (code, out, err) == (1, "", "error: url must be https\n")


def test_file_entry_is_saved_without_overwriting(env, capsys):
    for expected in ("report.txt", "report-1.txt"):
        code, out, _ = mde(env, capsys, "fake-file")
        target = env / "out" / expected
        assert (code, out) == (0, f"saved file: {target} (10 bytes)\n")
        assert target.read_bytes() == b"hello file"


def test_state_persists_between_runs_in_private_files(env, capsys):
    assert mde(env, capsys, "fake-context")[1].strip() == "count is 1"
    assert mde(env, capsys, "fake-context")[1].strip() == "count is 2"
    context_file = env / "state" / "tenant" / "integration_context.json"
    assert stat.S_IMODE(context_file.stat().st_mode) == 0o600
    assert json.loads(context_file.read_text()) == {"context": {"count": 2}, "version": 2}


def test_polling_is_followed_until_done(env, capsys):
    clock = FakeClock()
    code, out, err = mde(env, capsys, "fake-poll", "action_id=a1", clock=clock)
    assert code == 0 and clock.sleeps == [10, 10]
    lines = out.splitlines()
    assert lines[:4] == ["Action a1 is Pending", "Action a1 is Pending", "Action a1 is Succeeded", "=" * 22]
    assert "round 3" in out
    assert err.splitlines() == ["fake-poll: Action a1 is Pending · elapsed 0s / timeout 60s",
                                "fake-poll: Action a1 is Pending · elapsed 10s / timeout 60s"]


def test_polling_json_merges_rounds_by_the_context_rule(env, capsys):
    code, out, _ = mde(env, capsys, "fake-poll", "action_id=a1", "--json", "--poll-interval-override", "1")
    assert code == 0
    assert json.loads(out) == {"Fake.Action": [{"ID": "a1", "Status": "Succeeded"}]}


def test_polling_times_out(env, capsys):
    clock = FakeClock()
    code, _, err = mde(env, capsys, "fake-poll", "action_id=a1", "rounds=100", clock=clock)
    assert code == 1
    assert err.splitlines()[-1] == "error: timed out after 60 s waiting for fake-poll"
    assert sum(clock.sleeps) == 60


@pytest.mark.parametrize(("scale", "waits"), [("", [10.0]), ("1", [10.0]), ("0.25", [2.5]), ("0", [])])
def test_poll_wait_is_scaled_by_the_environment(monkeypatch, scale, waits):
    monkeypatch.setenv(cli.POLL_WAIT_SCALE_ENV, scale)
    slept = []
    cli.poll_wait(10, sleep=slept.append)
    assert slept == waits


def test_polling_runs_rounds_back_to_back_when_the_wait_scale_is_zero(env, capsys, monkeypatch):
    monkeypatch.setenv(cli.POLL_WAIT_SCALE_ENV, "0")
    base = ["--integration", str(FAKE_YML), "--state-dir", str(env / "state"), "--instance", str(env / "tenant.yml")]
    assert cli.main([*base, "fake-poll", "action_id=a1"], clock=FakeClock()) == 0  # the real sleep, never called
    assert "Action a1 is Succeeded" in capsys.readouterr().out


@pytest.mark.parametrize("scale", ["fast", "-1", "nan", "inf"])
def test_a_bad_poll_wait_scale_is_named(monkeypatch, scale):
    monkeypatch.setenv(cli.POLL_WAIT_SCALE_ENV, scale)
    with pytest.raises(ValueError, match=f"MDE_POLL_WAIT_SCALE must be a number of 0 or more \\(got '{scale}'\\)"):
        cli.poll_wait(10, sleep=lambda seconds: None)


def test_fetch_prints_incidents_and_saves_the_cursor(env, capsys):
    code, out, _ = mde(env, capsys, "fetch")
    assert code == 0
    assert out.splitlines()[0].split() == ["name", "occurred", "severity"]
    assert "alert 1  2024-01-02T00:00:00Z  2" in out
    assert f"fetched 2 incident(s); last run saved in {env / 'state' / 'tenant'}" in out
    code, out, err = mde(env, capsys, "fetch", "--json")
    assert [i["name"] for i in json.loads(out)] == ["alert 2", "alert 3"]
    assert "fetched 2 incident(s)" in err
    assert json.loads((env / "state" / "tenant" / "last_run.json").read_text()) == {"next": 4}


def test_commands_lists_arguments_without_an_instance(env, capsys):
    code, out, _ = mde(env, capsys, "commands", instance=False)
    assert code == 0
    assert "fake-echo  Echoes a message." in out
    assert "    message*  The message to echo. [may be given without name=]" in out
    assert "    colors    Several colors. [one of red, green, blue (comma-separated list)]" in out
    assert "    limit     How many. [default 50]" in out


def test_commands_name_shows_arguments_and_outputs(env, capsys):
    code, out, _ = mde(env, capsys, "commands", "fake-poll", instance=False)
    assert code == 0
    assert "Fake.Action.Status  String  Action status." in out
    assert mde(env, capsys, "commands", "nope", instance=False)[0] == 2


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for example in ("mde --instance instances/client-credentials.yml test-module",
                    "mde --instance X microsoft-atp-get-machines hostname=desktop- --json",
                    "mde --instance X fetch", "mde commands"):
        assert example in out


def test_runs_as_a_module(env):
    result = subprocess.run([sys.executable, "-m", "xsoar_local.cli", "--integration", str(FAKE_YML), "commands"],
                            capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert result.returncode == 0 and "fake-echo" in result.stdout


def test_merge_context_keeps_distinct_objects():
    entries = [{"EntryContext": {"M(val.ID == obj.ID)": {"ID": 1, "S": "a"}, "Plain": 1}},
               {"EntryContext": {"M(val.ID == obj.ID)": [{"ID": 2}, {"ID": 1, "S": "b"}], "Plain": 2}}]
    assert cli.merge_context(entries) == {"M": [{"ID": 1, "S": "b"}, {"ID": 2}], "Plain": [1, 2]}

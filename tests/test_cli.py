"""The `mde` CLI against a fake integration: argument checks, entries, polling, files, fetch, state."""

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xsoar_local import cli
from xsoar_local.render import render_table

FAKE_YML = Path(__file__).parent / "fake_integration" / "FakeIntegration.yml"
REPO = Path(__file__).parent.parent


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
    assert (code, err) == (0, "") and clock.sleeps == [10, 10]
    assert out.splitlines()[:4] == [
        "[round 1 · 0 of 60 s · next check in 10 s] Action a1 is Pending, round 1",
        "[round 2 · 10 of 60 s · next check in 10 s] Action a1 is Pending, round 2",
        "Action a1", "========="]
    assert "Action a1 is Succeeded, round 3" in out


def test_polling_states_the_interval_it_really_waits(env, capsys):
    clock = FakeClock()
    code, out, err = mde(env, capsys, "fake-poll", "action_id=a1", "rounds=2", "--poll-interval-override", "1",
                         "--json", clock=clock)
    assert code == 0 and clock.sleeps == [1]
    assert err.splitlines() == ["[round 1 · 0 of 60 s · next check in 1 s] Action a1 is Pending, round 1"]
    assert json.loads(out) == {"Fake.Action": [{"ID": "a1", "Status": "Succeeded"}]}


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
    assert "fake-echo\n    Echoes a message. Second sentence.\n" in out
    assert "    message*  The message to echo. [may be given without name=]" in out
    assert "    colors    Several colors. [one of red, green, blue (comma-separated list)]" in out
    assert "    limit     How many. [default 50]" in out


def test_commands_name_shows_arguments_and_outputs(env, capsys):
    code, out, _ = mde(env, capsys, "commands", "fake-poll", instance=False)
    assert code == 0
    assert "Fake.Action.Status  String  Action status." in out
    assert mde(env, capsys, "commands", "nope", instance=False)[0] == 2


def test_help_has_examples(capsys):
    assert cli.main(["--help"]) == 0
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


# ---------------------------------------------------------------- tables

def test_table_never_wraps_identifiers_and_shortens_free_text():
    machine_id = "4899036531e3a6b3b3c07d7b69a6e6b3f7f3c5a1"
    rows = [["ID", "Name", "Comment"],
            [machine_id, "desktop-1", "a long free text comment that cannot fit in the little room left"]]
    lines = render_table(rows, 70)
    assert all(len(line) <= 70 for line in lines)
    assert len(lines) == 3  # header, rule, one line per row: nothing wrapped
    assert lines[2].startswith(f"{machine_id}  desktop-1  a long free")
    assert lines[2].endswith("…")


def test_table_leaves_out_columns_that_cannot_fit_and_says_which():
    ids = ["4899036531e3a6b3b3c07d7b69a6e6b3f7f3c5a1", "7d1f2b4e-9c3a-4e5f-8a6b-1c2d3e4f5a6b", "0" * 64]
    lines = render_table([["Machine", "Action", "SHA256"], ids], 90)
    assert lines[2].split() == ids[:2]
    assert lines[-1] == "(1 more column(s) not shown: SHA256; widen the terminal or use --json)"


def test_table_keeps_line_breaks_inside_a_cell():
    lines = render_table([["IDs", "Note"], ["a1\na2", "x"]], 40)
    assert lines[2:] == ["a1   x", "a2"]


# ---------------------------------------------------------------- help and commands

def test_command_help_shows_its_arguments_from_the_yml(env, capsys):
    code, out, err = mde(env, capsys, "fake-echo", "--help", instance=False)
    assert (code, err) == (0, "")
    assert out.startswith("fake-echo\n    Echoes a message. Second sentence.\n\nusage: mde --instance FILE fake-echo "
                          "message=VALUE [name=value ...]\n")
    assert "  message (required)\n      The message to echo.\n      may be given without name=\n" in out
    assert "  colors\n      Several colors.\n      one of red, green, blue (comma-separated list)\n" in out
    assert "  limit\n      How many.\n      default 50\n" in out
    assert mde(env, capsys, "fetch", "-h", instance=False)[1].startswith("fetch-incidents\n")


def test_help_of_an_unknown_command_is_a_usage_error(env, capsys):
    code, out, err = mde(env, capsys, "fake-ecko", "--help", instance=False)
    assert (code, out) == (2, "") and "did you mean fake-echo" in err


@pytest.fixture
def fake_copy(tmp_path):
    """The fake integration copied, so a test may edit it or put a contract beside it."""
    directory = tmp_path / "integration"
    directory.mkdir()
    for source in FAKE_YML.parent.iterdir():
        if source.suffix in (".yml", ".py"):
            (directory / source.name).write_text(source.read_text())
    return directory / FAKE_YML.name


def test_a_command_of_the_original_integration_is_named_as_not_implemented(env, capsys, fake_copy):
    (fake_copy.parent / "test_data").mkdir()
    (fake_copy.parent / "test_data" / "contract_commands.json").write_text(json.dumps(
        {"commands": [{"name": "fake-echo"}, {"name": "fake-echoes-twice"}]}))
    code, out, err = cli.main(["--integration", str(fake_copy), "--state-dir", str(env / "state"),
                               "fake-echoes-twice"]), *capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == ("error: 'fake-echoes-twice' is a command of the original Fake Integration integration that this "
                   "integration does not implement yet; see `mde commands` for what it has\n")


def test_deprecated_command_names_its_replacement(env, capsys, fake_copy):
    document = yaml.safe_load(fake_copy.read_text())
    document["script"]["commands"].append({"name": "fake-old-echo", "deprecated": True, "arguments": [],
                                           "description": "Deprecated. Use fake-echo instead, e.g. fake-echo hi."})
    fake_copy.write_text(yaml.safe_dump(document))
    assert cli.main(["--integration", str(fake_copy), "--state-dir", str(env / "state"), "commands"]) == 0
    out = capsys.readouterr().out
    assert "fake-old-echo (deprecated; use fake-echo instead)\n    Deprecated. Use fake-echo instead, e.g. fake-echo " \
           "hi.\n" in out


def test_first_sentence_is_not_cut_at_an_abbreviation():
    assert cli.first_sentence("Filter, e.g. by name. More.") == "Filter, e.g. by name."


# ---------------------------------------------------------------- output modes

def test_yaml_output_is_the_merged_context(env, capsys):
    code, out, _ = mde(env, capsys, "fake-echo", "hi", "--output", "yaml")
    assert code == 0
    assert yaml.safe_load(out) == {"Fake.Echo": {"ID": "e1", "Message": "hi", "Limit": "50", "Color": None}}


def test_writing_to_a_closed_pipe_exits_quietly(env):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: like `mde ... | head -0`
    try:
        result = subprocess.run([sys.executable, "-m", "xsoar_local.cli", "--integration", str(FAKE_YML),
                                 "--state-dir", str(env / "state"), "commands"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (cli.EXIT_BROKEN_PIPE, "")


# ---------------------------------------------------------------- Ctrl-C while polling

def test_ctrl_c_while_polling_names_the_pending_actions(env, capsys):
    def interrupt(seconds):
        raise KeyboardInterrupt

    clock = FakeClock()
    clock.sleep = interrupt
    code, out, err = mde(env, capsys, "fake-poll", "action_id=a1", clock=clock)
    assert code == cli.EXIT_INTERRUPTED
    assert out.startswith("[round 1 · 0 of 60 s · next check in 10 s] Action a1 is Pending, round 1")
    assert err.splitlines()[1:] == [
        "interrupted: stopped waiting; what the command already requested goes on without the CLI.",
        "pending action ids: a1"]


def test_ctrl_c_hint_names_the_commands_to_check_and_cancel(env, capsys, fake_copy):
    document = yaml.safe_load(fake_copy.read_text())
    document["script"]["commands"] += [{"name": cli.CHECK_ACTIONS_COMMAND, "arguments": []},
                                       {"name": cli.CANCEL_ACTION_COMMAND, "arguments": []}]
    fake_copy.write_text(yaml.safe_dump(document))

    def interrupt(seconds):
        raise KeyboardInterrupt

    code = cli.main(["--integration", str(fake_copy), "--state-dir", str(env / "state"), "--instance",
                     str(env / "tenant.yml"), "fake-poll", "action_id=a1"], sleep=interrupt, clock=FakeClock())
    err = capsys.readouterr().err
    assert code == 130
    assert f"  check them:  mde --instance {env / 'tenant.yml'} {cli.CHECK_ACTIONS_COMMAND} id=a1" in err
    assert f"  cancel it:   mde --instance {env / 'tenant.yml'} {cli.CANCEL_ACTION_COMMAND} action_id=a1" in err


def test_sigint_to_a_polling_cli_exits_130_without_a_traceback(env):
    argv = [sys.executable, "-m", "xsoar_local.cli", "--integration", str(FAKE_YML), "--state-dir",
            str(env / "state"), "--instance", str(env / "tenant.yml"), "fake-poll", "action_id=a1", "rounds=100"]
    # A terminal's Ctrl-C: SIGINT with its default disposition (a background parent may have ignored it).
    environment = {k: v for k, v in os.environ.items() if k != "MDE_POLL_WAIT_SCALE"}  # it must really wait
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env=environment, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = process.stdout.readline()  # printed (and flushed) just before the CLI sleeps until round 2
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert first.startswith("[round 1 · 0 of 60 s · next check in 10 s] Action a1 is Pending, round 1")
    assert process.returncode == 130
    assert "Traceback" not in err and "pending action ids: a1" in err


# ---------------------------------------------------------------- caches

def test_plugin_and_yml_caches_follow_their_sources(env, capsys, fake_copy):
    base = ["--integration", str(fake_copy), "--state-dir", str(env / "state"), "--instance", str(env / "tenant.yml")]
    assert cli.main([*base, "fake-echo", "hi"]) == 0
    cache = env / "state" / ".cache"
    kinds = ["FakeIntegration.code", "instance-tenant.json", "integration-FakeIntegration.json"]
    assert sorted(cache_kinds(cache)) == kinds
    script = fake_copy.with_suffix(".py")
    script.write_text(script.read_text().replace('### Echo', '### Echo changed'))
    document = yaml.safe_load(fake_copy.read_text())
    document["script"]["commands"][0]["description"] = "Echoes, edited."
    fake_copy.write_text(yaml.safe_dump(document))
    capsys.readouterr()
    assert cli.main([*base, "fake-echo", "hi"]) == 0
    assert capsys.readouterr().out.startswith("Echo changed\n")
    assert cli.main([*base, "fake-echo", "--help"]) == 0
    assert "Echoes, edited." in capsys.readouterr().out
    assert sorted(cache_kinds(cache)) == kinds  # the entries of the old sources are gone


def cache_kinds(cache: Path) -> list[str]:
    return [p.name.rsplit("-", 1)[0] + p.suffix for p in cache.iterdir()]


def test_a_damaged_cache_entry_is_rebuilt(env, capsys, fake_copy):
    base = ["--integration", str(fake_copy), "--state-dir", str(env / "state"), "--instance", str(env / "tenant.yml")]
    assert cli.main([*base, "fake-echo", "hi"]) == 0
    for entry in (env / "state" / ".cache").iterdir():
        entry.write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert cli.main([*base, "fake-echo", "hi"]) == 0
    assert capsys.readouterr().out.startswith("Echo\n")


def test_a_polling_round_keeps_its_table_and_states_the_real_wait():
    text = ("### Requested\n| ID |\n| --- |\n| a1 |\n\nWaiting for 1 action. Checking again in 10 s.")
    rest, status = cli.split_status(cli.PLUGIN_NEXT_CHECK.sub("", text))
    assert status == "Waiting for 1 action."
    assert rest == "### Requested\n| ID |\n| --- |\n| a1 |"


def test_pending_action_ids_leave_out_actions_already_final():
    poll = {"PollingArgs": {"action_ids": "a1,a2,a3", "polling_started": "5", "comment": "x"}}
    context = {"MicrosoftATP.MachineAction": [{"ID": "a1", "Status": "Succeeded"}, {"ID": "a2", "Status": "Pending"}]}
    assert cli.pending_action_ids(poll, context) == ["a2", "a3"]

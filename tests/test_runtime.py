"""The local runtime: demistomock, state store, instance file, yml reader, Markdown rendering, docs, package."""

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
import yaml

import demistomock
from xsoar_local import docs, package, runtime
from xsoar_local.instance import InstanceError, load_instance
from xsoar_local.render import render_markdown
from xsoar_local.state import FileStore, MemoryStore, StaleVersionError, StateError, instance_state_dir
from xsoar_local.yml import load_integration

FAKE_YML = Path(__file__).parent / "fake_integration" / "FakeIntegration.yml"


@pytest.fixture
def integration():
    return load_integration(FAKE_YML)


# ---------------------------------------------------------------- demistomock

def test_demistomock_default_runtime_is_empty_and_in_memory():
    assert demistomock.params() == {}
    assert demistomock.args() == {}
    assert demistomock.investigation() == {"id": "local"}


def test_demistomock_delegates_to_the_installed_runtime():
    rt = runtime.Runtime(params={"url": "u"}, args={"a": "1"}, command="cmd")
    with runtime.use(rt):
        demistomock.results("ok")
        demistomock.results([{"Type": 1}, {"Type": 4}])
        demistomock.incidents([{"name": "i"}])
        demistomock.setIntegrationContext({"k": 1})
        demistomock.setLastRun({"t": 2})
        assert (demistomock.params(), demistomock.args(), demistomock.command()) == ({"url": "u"}, {"a": "1"}, "cmd")
        assert demistomock.getParam("url") == "u"
        assert demistomock.getIntegrationContext() == {"k": 1}
        assert demistomock.getIntegrationContextVersioned() == {"context": {"k": 1}, "version": 1}
        assert demistomock.getLastRun() == {"t": 2}
        assert demistomock.uniqueFile() != demistomock.uniqueFile()
        assert demistomock.get({"a": {"b": 3}}, "a.b") == 3
    assert rt.entries == ["ok", {"Type": 1}, {"Type": 4}]
    assert rt.incidents == [{"name": "i"}]
    assert runtime.current() is not rt


def test_demistomock_logs_to_stderr_only_when_verbose(capsys):
    with runtime.use(runtime.Runtime()):
        demistomock.debug("quiet")
        demistomock.info("quiet too")
        demistomock.error("quiet as well: the error entry tells the user")
    with runtime.use(runtime.Runtime(verbose=True)):
        demistomock.debug("now shown")
        demistomock.error("loud")
    out, err = capsys.readouterr()
    assert out == ""
    assert "loud" in err and "now shown" in err and "quiet" not in err


def test_versioned_set_with_stale_version_raises():
    store = MemoryStore()
    with runtime.use(runtime.Runtime(store=store)):
        version = demistomock.getIntegrationContextVersioned()["version"]
        demistomock.setIntegrationContextVersioned({"a": 1}, version=version)
        with pytest.raises(StaleVersionError, match="stale"):
            demistomock.setIntegrationContextVersioned({"a": 2}, version=version)
        demistomock.setIntegrationContextVersioned({"a": 3})  # -1: no check
    assert store.get_context_versioned() == {"context": {"a": 3}, "version": 2}


# ---------------------------------------------------------------- state files

def test_state_files_are_private(tmp_path):
    store = FileStore(tmp_path / "state")
    store.set_context({"token": "t"})
    store.set_last_run({"cursor": 1})
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name in ("integration_context.json", "last_run.json"):
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600
    assert FileStore(tmp_path / "state").get_context() == {"token": "t"}
    assert FileStore(tmp_path / "state").get_last_run() == {"cursor": 1}


def test_crash_between_write_and_replace_keeps_the_old_state(tmp_path, monkeypatch):
    store = FileStore(tmp_path)
    store.set_context({"v": "old"})

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.set_context({"v": "new"})
    monkeypatch.undo()
    assert store.get_context() == {"v": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "integration_context.json"]


def test_corrupt_state_file_is_reported_and_kept(tmp_path):
    (tmp_path / "integration_context.json").write_text('{"context": {')
    with pytest.raises(StateError, match=r"integration_context.json is corrupt \(line 1"):
        FileStore(tmp_path).get_context()
    assert (tmp_path / "integration_context.json").read_text() == '{"context": {'


def _increment_50_times(directory):
    store = FileStore(directory)
    for _ in range(50):
        while True:  # the usual optimistic loop around the versioned pair
            current = store.get_context_versioned()
            context = {"count": current["context"].get("count", 0) + 1}
            try:
                store.set_context_versioned(context, current["version"])
                break
            except StaleVersionError:
                continue


def test_two_processes_incrementing_do_not_lose_writes(tmp_path):
    fork = multiprocessing.get_context("fork")  # fcntl locks are Unix-only anyway
    workers = [fork.Process(target=_increment_50_times, args=(str(tmp_path),)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert FileStore(tmp_path).get_context_versioned() == {"context": {"count": 100}, "version": 100}


def test_instance_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MDE_STATE_DIR", str(tmp_path))
    assert instance_state_dir("my tenant/../x") == tmp_path / "my_tenant_.._x"
    assert instance_state_dir("t", tmp_path / "other") == tmp_path / "other" / "t"


# ---------------------------------------------------------------- instance file

def test_instance_yaml_with_env_expansion_defaults_and_booleans(tmp_path, integration):
    path = tmp_path / "tenant.yml"
    path.write_text(
        "env:\n  CA_DIR: /certs\n  REQUESTS_CA_BUNDLE: ${CA_DIR}/ca.pem\n"
        "params:\n  url: https://${HOST}/api\n  credentials: {identifier: me, password: '${SECRET}'}\n"
        "  insecure: 'true'\n  surprise: 1\n")
    instance = load_instance(path, integration, environ={"HOST": "h", "SECRET": "s3", "CA_DIR": "ignored"})
    assert instance.name == "tenant"
    assert instance.env == {"CA_DIR": "/certs", "REQUESTS_CA_BUNDLE": "/certs/ca.pem"}
    assert instance.params == {"url": "https://h/api", "credentials": {"identifier": "me", "password": "s3"},
                               "insecure": True, "surprise": 1, "max_fetch": "2"}
    assert instance.warnings == [f"warning: {path}: unknown parameter 'surprise' (not in FakeIntegration.yml's "
                                 "configuration)"]


def test_instance_json_and_name(tmp_path, integration):
    path = tmp_path / "i.json"
    path.write_text(json.dumps({"name": "prod", "params": {"url": "https://x"}}))
    instance = load_instance(path, integration, environ={})
    assert (instance.name, instance.params["insecure"]) == ("prod", False)


def test_instance_missing_env_var_names_it(tmp_path):
    path = tmp_path / "i.yml"
    path.write_text("params:\n  secret: {password: '${MDE_CLIENT_SECRET}'}\n")
    with pytest.raises(InstanceError, match="environment variable MDE_CLIENT_SECRET is not set "
                                            r"\(used in params.secret.password\)"):
        load_instance(path, environ={})


@pytest.mark.parametrize(("name", "text", "where"), [
    ("bad.yml", "params:\n  url: x\n  secret: [unclosed\n  other: 1\n", ":4:"),
    ("bad.json", '{"params": {\n  "url": "x",\n  }\n}', ":3:3: malformed JSON"),
])
def test_malformed_instance_file_names_the_line(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InstanceError) as error:
        load_instance(path, environ={})
    message = str(error.value)
    assert message.startswith(f"{path}{where}") and "\n" not in message


def test_instance_without_params_is_refused(tmp_path):
    path = tmp_path / "i.yml"
    path.write_text("name: x\n")
    with pytest.raises(InstanceError, match="no 'params:' mapping"):
        load_instance(path, environ={})


# ---------------------------------------------------------------- yml

def test_yml_reader(integration):
    echo = integration.commands["fake-echo"]
    assert [a.name for a in echo.arguments] == ["message", "color", "colors", "limit"]
    message, color, colors, limit = echo.arguments
    assert message.required and message.positional
    assert color.predefined == ["red", "green", "blue"] and not color.is_array
    assert colors.is_array
    assert limit.default_value == "50"
    assert echo.outputs[0].context_path == "Fake.Echo.ID"
    assert {"test-module", "fetch-incidents"} <= set(integration.commands)
    assert integration.script_path == FAKE_YML.with_suffix(".py")
    assert integration.param("insecure").type == 8


# ---------------------------------------------------------------- rendering

def test_markdown_table_is_aligned_and_shortened_not_wrapped():
    markdown = ("### Machines\n|ID|Name|Notes|\n|---|---|---|\n| 1 | desk\\|top | short |\n"
                "| 22 | [portal](https://p/1) | " + "word " * 12 + "|\n")
    lines = render_markdown(markdown, width=40).splitlines()
    assert lines[:2] == ["Machines", "========"]
    assert lines[2].split() == ["ID", "Name", "Notes"]
    assert set(lines[3].replace(" ", "")) == {"-"}
    assert lines[4].split() == ["1", "desk|top", "short"]
    assert lines[5].startswith("22  portal")
    assert all(len(line) <= 40 for line in lines)
    assert len(lines) == 6  # one line per row: long free text is shortened, not wrapped
    notes_column = lines[2].index("Notes")
    assert lines[5][notes_column:].startswith("word word") and lines[5].endswith("…")


def test_markdown_links_headers_and_emphasis():
    text = render_markdown("## Title\n**bold** see [docs](https://d) or [https://u](https://u)", width=80)
    assert text.splitlines() == ["Title", "=====", "bold see docs <https://d> or https://u"]


# ---------------------------------------------------------------- docs and package

def test_docs_reference(integration):
    markdown = docs.command_reference(integration)
    assert "## fake-echo" in markdown and "## test-module" not in markdown
    assert "| message | yes | The message to echo. |  |  |" in markdown
    assert "| colors | no | Several colors. Comma-separated list. | red, green, blue |  |" in markdown
    assert "| limit | no | How many. |  | 50 |" in markdown
    assert "| Fake.Echo.Message | String | The message \\| with a pipe. |" in markdown
    assert "!fake-poll action_id=<action_id>" in markdown


def test_docs_main(capsys):
    assert docs.main([str(FAKE_YML)]) == 0
    assert capsys.readouterr().out.startswith("# Fake Integration: command reference")


def test_package_embeds_the_script_and_sets_the_image(tmp_path, capsys):
    assert package.main(["--out", str(tmp_path), "--integration", str(FAKE_YML), "--docker-image", "demisto/x:1"]) == 0
    target = tmp_path / "integration-FakeIntegration.yml"
    assert capsys.readouterr().out.strip() == str(target)
    unified = yaml.safe_load(target.read_text())
    code = unified["script"]["script"]
    assert "def main():" in code and "import demistomock" not in code
    assert unified["script"]["dockerimage"] == "demisto/x:1"
    assert unified["commonfields"]["id"] == "FakeIntegration"
    assert unified["script"]["commands"][0]["name"] == "fake-echo"


def test_package_refuses_imports_the_image_lacks(tmp_path, capsys):
    yml = tmp_path / "Bad.yml"
    yml.write_text(FAKE_YML.read_text())
    (tmp_path / "Bad.py").write_text("import json\nimport demistomock as demisto\nimport pandas\nfrom yaml import x\n")
    assert package.main(["--out", str(tmp_path / "dist"), "--integration", str(yml)]) == 1
    err = capsys.readouterr().err
    assert "pandas (line 3), yaml (line 4)" in err
    assert "the docker image demisto/python3:3.11 may not have" in err  # the yml's own image by default

"""`mde`: run one command of an XSOAR-style integration (yml + py) locally, the way XSOAR would."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import demistomock
from xsoar_local.cache import cache_dir_for, compile_plugin
from xsoar_local.instance import Instance, InstanceError, load_instance
from xsoar_local.render import render_markdown, render_table, shorten, terminal_width
from xsoar_local.runtime import LOCAL_INVESTIGATION_ID, Runtime, use
from xsoar_local.state import FileStore, StateError, default_state_root, instance_state_dir
from xsoar_local.yml import FETCH_INCIDENTS, TEST_MODULE, Argument, Command, Integration, load_integration

DEFAULT_INTEGRATION = "MicrosoftDefenderForEndpoint.yml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # what a shell reports for SIGINT and SIGPIPE
ENTRY_ERROR = 4
ENTRY_WARNING = 11  # XSOAR's warning entry: the task succeeds, but not everything worked
ENTRY_EXECUTION_METRICS = 19  # API calls by outcome, for XSOAR's API Execution Metrics dashboard
DEFAULT_NEXT_RUN = 30.0
DEFAULT_POLL_TIMEOUT = 600.0
ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
CONTEXT_KEY = re.compile(r"^(?P<path>[^(]+?)\s*(\((?P<rule>.*)\))?$", re.DOTALL)
# The integration's own "checking again in 10 s": the CLI states the wait it really makes instead.
PLUGIN_NEXT_CHECK = re.compile(r"\s*\b(?:checking|check|polling)\s+again\s+in\s+\d+\s*(?:s|sec|seconds?)\b\.?",
                               re.IGNORECASE)
ACTION_IDS_ARG = re.compile(r"(^|_)action_ids?$")
FINAL_ACTION_STATUSES = {"Succeeded", "Failed", "Cancelled", "TimeOut"}
CHECK_ACTIONS_COMMAND = "microsoft-atp-list-machine-actions-details"
CANCEL_ACTION_COMMAND = "microsoft-atp-cancel-machine-action"
# Commands of the integration this one replaces, to tell "not implemented yet" from a typo.
CONTRACT_FILE = Path("test_data") / "contract_commands.json"
OUTPUT_MODES = ("table", "json", "yaml")

EPILOG = """\
commands:
  COMMAND [name=value ...]  run an integration command; a bare value goes to the command's default argument
  test-module               what the Test button runs; prints "ok" when the instance works
  fetch                     run fetch-incidents, print the incidents and save the fetch cursor in the state
  commands [NAME]           list the commands and their arguments (or one command in detail); no --instance needed
  COMMAND --help            that command's arguments: description, required, default, allowed values

examples:
  mde --instance instances/client-credentials.yml test-module
  mde --instance X microsoft-atp-get-machines hostname=desktop- --json
  mde --instance X microsoft-atp-get-machines --output yaml
  mde --instance X fetch
  mde commands
  mde microsoft-atp-isolate-machine --help

instance file (YAML or JSON; parameter names are the `name:`s under the yml's `configuration:`):
  name: my-tenant                          # optional: names the state directory (default: file name)
  env: {REQUESTS_CA_BUNDLE: /path/ca.pem}  # optional: environment for the run
  params:                                  # the instance's parameters, as in XSOAR
    auth_flow: Client Credentials
    _auth_id_encrypted: {password: "<application (client) id>"}
    _tenant_id_encrypted: {password: "<directory (tenant) id>"}
    credentials: {password: "${MDE_CLIENT_SECRET}"}   # ${VAR} is read from the environment

exit status: 0 success, 1 the command failed, 2 bad usage (unknown command or argument, bad instance file),
3 partly done (a warning entry, e.g. an action failed on some of the machines), 130 interrupted (Ctrl-C),
141 the reader of the output went away (`| head`), quietly.
"""


class UsageError(Exception):
    """Bad command line or instance file: exit 2 before anything runs."""


class CommandFailed(Exception):
    """The command ran and failed: exit 1."""


class Interrupted(Exception):
    """Ctrl-C: what was pending has been reported; exit 130."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mde",
        description="Run a command of an XSOAR integration locally, with the parameters of an XSOAR instance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # `mde COMMAND --help` describes the command, so -h/--help is handled after parsing
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help (after COMMAND: that command's)")
    parser.add_argument("--instance", metavar="FILE", help="instance file with the integration's parameters")
    parser.add_argument("--integration", metavar="YML",
                        help=f"integration yml; the .py beside it is run (default: {DEFAULT_INTEGRATION} "
                             "in the current directory, else next to this package)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--output", "-o", choices=OUTPUT_MODES, default="table",
                        help="table (default): the entries as a person reads them; json or yaml: the entries' "
                             "context (EntryContext), or the incidents for fetch")
    output.add_argument("--json", dest="output", action="store_const", const="json", help="same as --output json")
    output.add_argument("--raw", action="store_true", help="print the entries' raw Contents")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the plugin's debug log, API call counts, full intermediate polling results "
                             "and tracebacks")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="base directory for saved state (default: $MDE_STATE_DIR or ~/.local/state/mde); "
                             "an instance's state goes to DIR/<instance name>/, caches to DIR/.cache/")
    parser.add_argument("--output-dir", metavar="DIR", default=".", help="where files returned by commands are saved")
    parser.add_argument("--poll-interval-override", metavar="SECONDS", type=float,
                        help="wait this long between polling rounds instead of what the command asks")
    parser.add_argument("command", nargs="?", metavar="COMMAND", help="command to run (see below)")
    parser.add_argument("args", nargs="*", metavar="name=value", help="command arguments")
    return parser


POLL_WAIT_SCALE_ENV = "MDE_POLL_WAIT_SCALE"


def poll_wait(seconds: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """The wait between polling rounds, times $MDE_POLL_WAIT_SCALE (default 1; 0 = no wait: tests that move
    the emulator's clock themselves)."""
    value = os.environ.get(POLL_WAIT_SCALE_ENV, "").strip() or "1"
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not 0 <= scale < float("inf"):
        raise ValueError(f"{POLL_WAIT_SCALE_ENV} must be a number of 0 or more (got '{value}')")
    if seconds * scale > 0:
        sleep(seconds * scale)


def main(argv: list[str] | None = None, *, sleep: Callable[[float], None] = poll_wait,
         clock: Callable[[], float] = time.monotonic) -> int:
    try:
        code = _main(argv, sleep=sleep, clock=clock)
        sys.stdout.flush()  # a closed pipe shows up here, while it can still be handled quietly
        return code
    except BrokenPipeError:  # `mde ... | head`: the reader has what it wanted
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None, *, sleep: Callable[[float], None], clock: Callable[[], float]) -> int:
    parser = build_parser()
    options = parser.parse_intermixed_args(argv)
    if options.help and options.command in (None, "commands"):
        parser.print_help()
        return EXIT_OK
    if not options.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        cache_dir = cache_dir_for(Path(options.state_dir) if options.state_dir else default_state_root())
        integration = load_integration(options.integration or find_default_integration(), cache_dir)
        if options.help:
            return describe_commands(integration, [options.command])
        if options.command == "commands":
            return describe_commands(integration, options.args)
        return Session(options, integration, cache_dir=cache_dir, sleep=sleep, clock=clock).run()
    except Interrupted:
        return EXIT_INTERRUPTED
    except (UsageError, InstanceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandFailed, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except Exception as e:  # an uncaught exception from the plugin: one line unless --verbose
        if options.verbose:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}" if str(e) else f"error: {type(e).__name__}", file=sys.stderr)
        return EXIT_FAILED


def _discard_stdout() -> None:
    """Point the real stdout at /dev/null, so flushing it at exit does not complain about the closed pipe."""
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


def find_default_integration() -> Path:
    candidates = [Path.cwd() / DEFAULT_INTEGRATION, Path(__file__).resolve().parent.parent / DEFAULT_INTEGRATION]
    for path in candidates:
        if path.exists():
            return path
    raise UsageError(f"no {DEFAULT_INTEGRATION} in the current directory; name the yml with --integration PATH.yml")


def find_command(integration: Integration, name: str) -> Command:
    name = FETCH_INCIDENTS if name == "fetch" else name
    if name in integration.commands:
        return integration.commands[name]
    if name in original_commands(integration):
        raise UsageError(f"'{name}' is a command of the original {integration.display} integration that this "
                         f"integration does not implement yet; see `mde commands` for what it has")
    close = difflib.get_close_matches(name, integration.commands, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `mde commands`"
    raise UsageError(f"unknown command '{name}' for {integration.display}{hint}")


def original_commands(integration: Integration) -> set[str]:
    """Command names of the integration this one replaces, when the contract file is beside the yml."""
    try:
        contract = json.loads((integration.yml_path.parent / CONTRACT_FILE).read_text(encoding="utf-8"))
        return {str(c["name"]) for c in contract.get("commands") or []}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()


# ---------------------------------------------------------------- argument checks

def parse_command_args(command: Command, tokens: list[str]) -> dict[str, str]:
    """`name=value` tokens (a bare value goes to the `default: true` argument), checked against the yml."""
    given: dict[str, str] = {}
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep or not ARG_NAME.match(name):
            name, value = _positional_name(command, token), token
        if name in given:
            raise UsageError(f"argument {name} given twice")
        given[name] = value
    return check_args(command, given)


def _positional_name(command: Command, token: str) -> str:
    positional = next((a for a in command.arguments if a.positional), None)
    if positional is None:
        raise UsageError(f"{command.name} has no default argument for the bare value '{token}'; use name=value")
    return positional.name


def check_args(command: Command, given: dict[str, str]) -> dict[str, str]:
    for name in given:
        if command.argument(name) is None:
            allowed = ", ".join(a.name for a in command.arguments) or "none"
            raise UsageError(f"unknown argument '{name}' for {command.name} (allowed: {allowed})")
    args = dict(given)
    for arg in command.arguments:
        if args.get(arg.name, "") == "" and arg.default_value is not None:
            args[arg.name] = arg.default_value
        if arg.required and args.get(arg.name, "") == "":
            raise UsageError(f"missing required argument {arg.name} for {command.name}"
                             + (f": {arg.description}" if arg.description else ""))
        if arg.predefined and args.get(arg.name, "") != "":
            _check_predefined(arg, args[arg.name])
    return args


def _check_predefined(arg: Argument, value: str) -> None:
    items = [v.strip() for v in value.split(",")] if arg.is_array else [value]
    for item in items:
        if item not in arg.predefined:
            raise UsageError(f"{arg.name} must be one of {', '.join(arg.predefined)} (got '{item}')")


# ---------------------------------------------------------------- running

class Session:
    """One CLI invocation: the instance, its state, and the plugin runs (more than one when polling)."""

    def __init__(self, options: argparse.Namespace, integration: Integration, *, cache_dir: Path | None = None,
                 sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.options = options
        self.integration = integration
        self.cache_dir = cache_dir
        self.sleep = sleep
        self.clock = clock
        self.failed = False
        self.warned = False
        self.mode = "raw" if options.raw else options.output
        # Progress goes with the table a person reads; with json/yaml/raw stdout stays machine-readable.
        self.progress = sys.stdout if self.mode == "table" else sys.stderr
        self._code: types.CodeType | None = None

    def run(self) -> int:
        command = find_command(self.integration, self.options.command)
        args = parse_command_args(command, self.options.args)
        with self.prepared() as instance:
            if command.name == FETCH_INCIDENTS:
                self.fetch(instance)
            else:
                self.run_with_polling(instance, command.name, args)
        return EXIT_FAILED if self.failed else EXIT_PARTIAL if self.warned else EXIT_OK

    @contextlib.contextmanager
    def prepared(self) -> Iterator[Instance]:
        """The instance, with its state, a scratch directory and its environment in place for plugin runs."""
        instance = self._instance()
        self.store = FileStore(instance_state_dir(instance.name, self.options.state_dir))
        with tempfile.TemporaryDirectory(prefix="mde-run-") as workdir, _environment(instance.env):
            self.workdir = Path(workdir)
            yield instance

    def _instance(self) -> Instance:
        if not self.options.instance:
            raise UsageError("--instance FILE is required to run a command (see mde --help)")
        instance = load_instance(self.options.instance, self.integration, cache_dir=self.cache_dir)
        for warning in instance.warnings:
            print(warning, file=sys.stderr)
        return instance

    def run_plugin(self, instance: Instance, command: str, args: dict) -> Runtime:
        runtime = Runtime(params=instance.params, args=args, command=command, store=self.store,
                          workdir=self.workdir, verbose=self.options.verbose)
        script = self._script_path()
        if self._code is None:
            self._code = compile_plugin(script, self.cache_dir)
        with use(runtime), _cwd(self.workdir), _sys_path(script.parent):
            try:
                # XSOAR gives the script a global `demisto`; a unified yml's code relies on it.
                run_as_main(self._code, script, {"demisto": demistomock})
            except SystemExit as e:  # XSOAR's return_error() exits after reporting; a bare exit is not an error
                if e.code not in (None, 0):
                    runtime.results({"Type": ENTRY_ERROR, "Contents": f"the integration exited with status {e.code}"})
        return runtime

    def _script_path(self) -> Path:
        path = self.integration.script_path
        if path is None:  # a unified yml carries the code itself
            path = self.workdir / f"{self.integration.yml_path.stem}.py"
            if not path.exists():
                path.write_text(self.integration.script, encoding="utf-8")
        elif not path.exists():
            raise UsageError(f"integration code {path} not found (next to {self.integration.yml_path.name})")
        return path

    def run_with_polling(self, instance: Instance, command: str, args: dict) -> None:
        start = self.clock()
        all_entries: list = []
        poll: dict | None = None
        try:
            for round_number in range(1, sys.maxsize):
                entries = self.run_plugin(instance, command, args).entries
                all_entries += entries
                poll = next((e for e in entries if isinstance(e, dict) and e.get("PollingCommand")), None)
                if poll is None:
                    self.show_entries(command, entries)
                    break
                command, args = poll["PollingCommand"], dict(poll.get("PollingArgs") or {})
                timeout = float(poll.get("Timeout") or DEFAULT_POLL_TIMEOUT)
                elapsed = self.clock() - start
                if elapsed >= timeout:
                    raise CommandFailed(f"timed out after {elapsed:.0f} s waiting for {command}")
                wait = self.options.poll_interval_override
                wait = float(poll.get("NextRun") or DEFAULT_NEXT_RUN) if wait is None else wait
                wait = max(0.0, min(wait, timeout - elapsed))  # the last round runs right at the timeout
                self.show_round(command, entries, round_number, f"{elapsed:.0f} of {timeout:.0f} s · "
                                f"next check in {wait:g} s")
                self.sleep(wait)
        except KeyboardInterrupt:
            self.report_interrupted(poll, all_entries)
            raise Interrupted from None
        if self.mode in OUTPUT_MODES[1:]:
            print_data(merge_context(all_entries), self.mode)

    def show_round(self, command: str, entries: list, round_number: int, timing: str) -> None:
        """A round that is not the last: one progress line with its status (after the table of the first round,
        which names what was started), unless --verbose asks for every round in full."""
        for entry in entries:
            if (not isinstance(entry, dict) or entry.get("Type") in (ENTRY_ERROR, ENTRY_EXECUTION_METRICS)
                    or entry.get("FileID")):  # errors, files and metrics show as they do outside polling
                self.show_entries(command, [entry])
                continue
            text = PLUGIN_NEXT_CHECK.sub("", _entry_text(entry) or "").strip()
            rest, status = split_status(text)
            if self.mode == "table" and (self.options.verbose or (round_number == 1 and "|" in rest)):
                print(render_markdown(text if self.options.verbose else rest, color=sys.stdout.isatty()))
                print()
            prefix = f"[round {round_number} · {timing}]"
            print(f"{prefix} {shorten(status, max(terminal_width() - len(prefix) - 2, 20))}".rstrip(),
                  file=self.progress, flush=True)

    def report_interrupted(self, poll: dict | None, entries: list) -> None:
        pending = pending_action_ids(poll, merge_context(entries)) if poll else []
        lines = ["", "interrupted: stopped waiting; what the command already requested goes on without the CLI."]
        if pending:
            ids = ",".join(pending)
            instance = f"--instance {self.options.instance} " if self.options.instance else ""
            lines.append(f"pending action ids: {', '.join(pending)}")
            if CHECK_ACTIONS_COMMAND in self.integration.commands:
                lines.append(f"  check them:  mde {instance}{CHECK_ACTIONS_COMMAND} id={ids}")
            if CANCEL_ACTION_COMMAND in self.integration.commands:
                label, action = ("cancel it: ", pending[0]) if len(pending) == 1 else ("cancel one:", "ID")
                lines.append(f"  {label}  mde {instance}{CANCEL_ACTION_COMMAND} action_id={action} "
                             "comment=\"why it is cancelled\"")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def fetch(self, instance: Instance) -> None:
        with self.store.fetch_lock():  # XSOAR runs one fetch per instance at a time
            runtime = self.run_plugin(instance, FETCH_INCIDENTS, {})
        self.show_entries(FETCH_INCIDENTS, runtime.entries)
        incidents = runtime.incidents or []
        if self.mode in OUTPUT_MODES[1:]:
            print_data(incidents, self.mode)
        elif incidents and self.mode == "table":
            rows = [["name", "occurred", "severity"]]
            rows += [[str(i.get("name", "")), str(i.get("occurred", "")), str(i.get("severity", ""))]
                     for i in incidents]
            print("\n".join(render_table(rows, terminal_width())))
        saved = (f"last run saved in {self.store.directory}" if runtime.last_run_saved
                 else "last run not saved (the next fetch starts from the same point)")
        print(f"fetched {len(incidents)} incident(s); {saved}", file=self.progress)

    # ------------------------------------------------------------ output

    def show_entries(self, command: str, entries: list) -> None:
        for entry in entries:
            if isinstance(entry, str) or not isinstance(entry, dict):
                self._show_text_entry(command, str(entry))
            elif entry.get("Type") == ENTRY_ERROR:
                self.failed = True
                print(f"error: {entry.get('Contents')}", file=sys.stderr)
            elif entry.get("Type") == ENTRY_WARNING:
                self.warned = True
                print(f"warning: {entry.get('Contents')}", file=sys.stderr)
            elif entry.get("Type") == ENTRY_EXECUTION_METRICS:
                if self.options.verbose:
                    print(f"[metrics] API calls: {metrics_summary(entry)}", file=sys.stderr)
            elif entry.get("FileID"):
                self.save_file(entry)
            elif self.mode == "raw":
                print(_as_text(entry.get("Contents")))
            elif self.mode == "table":
                self._show_note(entry)
        sys.stdout.flush()

    def _show_text_entry(self, command: str, text: str) -> None:
        if command == TEST_MODULE and text != "ok":  # XSOAR shows anything but "ok" as the test's failure
            self.failed = True
            print(f"error: {text}", file=sys.stderr)
        else:
            print(text)

    def _show_note(self, entry: dict) -> None:
        text = _entry_text(entry)
        if text is None:
            return
        if entry.get("HumanReadable"):
            print(render_markdown(text, color=sys.stdout.isatty()))
            print()
        else:
            print(text)

    def save_file(self, entry: dict) -> None:
        source = self.workdir / f"{LOCAL_INVESTIGATION_ID}_{entry['FileID']}"
        if not source.exists():
            self.failed = True
            print(f"error: file entry '{entry.get('File')}': the integration did not write {source.name}",
                  file=sys.stderr)
            return
        output_dir = Path(self.options.output_dir).resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
        target = _free_path(output_dir / (Path(str(entry.get("File") or entry["FileID"])).name or entry["FileID"]))
        shutil.move(str(source), target)
        print(f"saved file: {target} ({target.stat().st_size} bytes)", file=self.progress)


def run_as_main(code: types.CodeType, path: Path, init_globals: dict) -> None:
    """What `runpy.run_path` does, with code compiled (and cached) beforehand: run it as `__main__`."""
    module = types.ModuleType("__main__")
    module.__dict__.update(init_globals)
    module.__dict__.update(__file__=str(path), __cached__=None, __loader__=None, __package__=None, __spec__=None)
    saved_main, saved_argv0 = sys.modules.get("__main__"), sys.argv[0] if sys.argv else None
    sys.modules["__main__"] = module  # dataclasses and pickle look classes up through sys.modules
    if sys.argv:
        sys.argv[0] = str(path)
    try:
        exec(code, module.__dict__)
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        if saved_argv0 is not None:
            sys.argv[0] = saved_argv0


def split_status(markdown: str) -> tuple[str, str]:
    """(the note without its status, the status as plain text): the status is the last line that is not part
    of a table or a header."""
    lines = markdown.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if line and not line.startswith(("|", "#")):
            plain = " ".join(render_markdown(line, width=10_000).split())
            return "\n".join(lines[:i] + lines[i + 1:]).strip(), plain
    return markdown, ""


def pending_action_ids(poll: dict, context: dict) -> list[str]:
    """The action ids the next polling round would check, less those the context already shows as final."""
    polled = [item.strip() for name, value in (poll.get("PollingArgs") or {}).items()
              if ACTION_IDS_ARG.search(str(name)) for item in str(value).split(",") if item.strip()]
    final = {str(obj.get("ID")) for value in context.values() for obj in (value if isinstance(value, list) else [value])
             if isinstance(obj, dict) and obj.get("Status") in FINAL_ACTION_STATUSES}
    return [action_id for action_id in dict.fromkeys(polled) if action_id not in final]


def print_data(data: object, mode: str) -> None:
    if mode == "yaml":
        import yaml  # only this output needs the dumper

        plain = json.loads(json.dumps(data, default=str))  # what the JSON output holds, as YAML
        print(yaml.dump(plain, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False,
                        allow_unicode=True, default_flow_style=False), end="")
    else:
        print(json.dumps(data, indent=2, default=str))


def metrics_summary(entry: dict) -> str:
    counts = [f"{m.get('Type')} {m.get('APICallsCount')}" for m in entry.get("APIExecutionMetrics") or []]
    return ", ".join(counts) or "none"


def _entry_text(entry: dict) -> str | None:
    if entry.get("HumanReadable"):
        return str(entry["HumanReadable"])
    contents = entry.get("Contents")
    return None if contents in (None, "") else _as_text(contents)


def _as_text(contents: object) -> str:
    return contents if isinstance(contents, str) else json.dumps(contents, indent=2, default=str)


def _free_path(path: Path) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext`, ... : never overwrite a file the user already has."""
    n = 0
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def merge_context(entries: list) -> dict:
    """EntryContext of all entries merged the way XSOAR would: keys lose their `(val... == obj.X)` rule,
    and objects the rule says are the same (equal on every `obj.X` field) replace each other."""
    merged: dict = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for key, value in (entry.get("EntryContext") or {}).items():
            match = CONTEXT_KEY.match(key)
            path, rule = (match.group("path"), match.group("rule") or "") if match else (key, "")
            identity = list(dict.fromkeys(re.findall(r"obj\.(\w+)", rule)))
            merged[path] = value if path not in merged else _merge_values(merged[path], value, identity)
    return merged


def _merge_values(old: object, new: object, identity: list[str]) -> list:
    items = list(old) if isinstance(old, list) else [old]
    for item in new if isinstance(new, list) else [new]:
        same = next((i for i, existing in enumerate(items)
                     if identity and isinstance(existing, dict) and isinstance(item, dict)
                     and all(existing.get(k) == item.get(k) for k in identity)), None)
        if same is None:
            items.append(item)
        else:
            items[same] = {**items[same], **item}
    return items


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _sys_path(directory: Path) -> Iterator[None]:
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))


# ---------------------------------------------------------------- mde commands, mde COMMAND --help

def describe_commands(integration: Integration, names: list[str]) -> int:
    if not names:
        width = terminal_width()
        for command in integration.commands.values():
            print(_command_title(integration, command))
            if command.description:
                print(textwrap.fill(" ".join(command.description.split()), width, initial_indent="    ",
                                    subsequent_indent="    "))
            _print_arguments(command)
            print()
        print("* required argument. One command in detail: mde COMMAND --help (or mde commands COMMAND)")
        return EXIT_OK
    for name in names:
        describe_command(integration, find_command(integration, name))
    return EXIT_OK


def describe_command(integration: Integration, command: Command) -> None:
    width = terminal_width()
    shown_name = "fetch" if command.name == FETCH_INCIDENTS else command.name
    print(_command_title(integration, command))
    if command.description:
        print(textwrap.fill(" ".join(command.description.split()), width, initial_indent="    ",
                            subsequent_indent="    "))
    print(f"\nusage: mde --instance FILE {shown_name}" + "".join(
        f" {a.name}=VALUE" if a.required else "" for a in command.arguments) + (
        " [name=value ...]" if any(not a.required for a in command.arguments) else ""))
    print("\narguments:" if command.arguments else "\narguments: none")
    for arg in command.arguments:
        print(f"  {arg.name}" + (" (required)" if arg.required else ""))
        details = [" ".join(arg.description.split())] if arg.description else []
        details += _argument_facts(arg)
        for detail in details:
            print(textwrap.fill(detail, width, initial_indent="      ", subsequent_indent="      "))
    if command.outputs:
        print("\noutputs:")
        rows = [["context path", "type", "description"]]
        rows += [[o.context_path, o.type, o.description] for o in command.outputs]
        print("\n".join("    " + line for line in render_table(rows, width - 4)))


def _argument_facts(arg: Argument) -> list[str]:
    facts = []
    if arg.predefined:
        facts.append("one of " + ", ".join(arg.predefined) + (" (comma-separated list)" if arg.is_array else ""))
    elif arg.is_array:
        facts.append("comma-separated list")
    if arg.default_value is not None:
        facts.append(f"default {arg.default_value}")
    if arg.positional:
        facts.append("may be given without name=")
    if arg.deprecated:
        facts.append("deprecated")
    return facts


def _command_title(integration: Integration, command: Command) -> str:
    if not command.deprecated:
        return command.name
    replacement = replacement_of(integration, command)
    return f"{command.name} (deprecated" + (f"; use {replacement} instead)" if replacement else ")")


def replacement_of(integration: Integration, command: Command) -> str | None:
    """The first other command the deprecated command's description names."""
    for word in re.findall(r"[a-z0-9][a-z0-9-]+[a-z0-9]", command.description):
        if word != command.name and word in integration.commands:
            return word
    return None


def _print_arguments(command: Command) -> None:
    """One line per argument: its first sentence and its facts (the overview of `mde commands`)."""
    width = max((len(a.name) + 1 for a in command.arguments), default=0)
    for arg in command.arguments:
        extras = _argument_facts(arg)
        details = first_sentence(arg.description) + (f" [{'; '.join(extras)}]" if extras else "")
        print(f"    {(arg.name + ('*' if arg.required else '')).ljust(width)}  {details}")


ABBREVIATIONS = re.compile(r"\b(e\.g|i\.e|etc|vs|approx|incl)\.$", re.IGNORECASE)


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not the one in "e.g." or "1.5")."""
    line = " ".join(text.split())
    for match in re.finditer(r"\.(\s|$)", line):
        candidate = line[: match.start() + 1]
        if not ABBREVIATIONS.search(candidate):
            return candidate
    return line


if __name__ == "__main__":
    sys.exit(main())

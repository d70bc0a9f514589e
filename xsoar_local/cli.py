"""`mde`: run one command of an XSOAR-style integration (yml + py) locally, the way XSOAR would."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import runpy
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import demistomock
from xsoar_local.instance import Instance, InstanceError, load_instance
from xsoar_local.render import first_line, render_markdown, render_table, terminal_width
from xsoar_local.runtime import LOCAL_INVESTIGATION_ID, Runtime, use
from xsoar_local.state import FileStore, StateError, instance_state_dir
from xsoar_local.yml import FETCH_INCIDENTS, TEST_MODULE, Argument, Command, Integration, load_integration

DEFAULT_INTEGRATION = "MicrosoftDefenderForEndpoint.yml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ENTRY_ERROR = 4
ENTRY_EXECUTION_METRICS = 19  # API calls by outcome, for XSOAR's API Execution Metrics dashboard
DEFAULT_NEXT_RUN = 30.0
DEFAULT_POLL_TIMEOUT = 600.0
ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
CONTEXT_KEY = re.compile(r"^(?P<path>[^(]+?)\s*(\((?P<rule>.*)\))?$", re.DOTALL)

EPILOG = """\
commands:
  COMMAND [name=value ...]  run an integration command; a bare value goes to the command's default argument
  test-module               what the Test button runs; prints "ok" when the instance works
  fetch                     run fetch-incidents, print the incidents and save the fetch cursor in the state
  commands [NAME]           list the commands and their arguments (or one command in detail); no --instance needed

examples:
  mde --instance instances/client-credentials.yml test-module
  mde --instance X microsoft-atp-get-machines hostname=desktop- --json
  mde --instance X fetch
  mde commands
  mde commands microsoft-atp-isolate-machine

instance file (YAML or JSON):
  name: my-tenant                          # optional: names the state directory (default: file name)
  env: {REQUESTS_CA_BUNDLE: /path/ca.pem}  # optional: environment for the run
  params:                                  # the instance's parameters, as in XSOAR
    credentials_id: {password: "<app id>"}
    secret: {password: "${MDE_CLIENT_SECRET}"}   # ${VAR} is read from the environment

exit status: 0 success, 1 the command failed, 2 bad usage (unknown command or argument, bad instance file).
"""


class UsageError(Exception):
    """Bad command line or instance file: exit 2 before anything runs."""


class CommandFailed(Exception):
    """The command ran and failed: exit 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mde",
        description="Run a command of an XSOAR integration locally, with the parameters of an XSOAR instance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--instance", metavar="FILE", help="instance file with the integration's parameters")
    parser.add_argument("--integration", metavar="YML",
                        help=f"integration yml; the .py beside it is run (default: {DEFAULT_INTEGRATION} "
                             "in the current directory, else next to this package)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the entries' context (EntryContext) as JSON")
    output.add_argument("--raw", action="store_true", help="print the entries' raw Contents")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the plugin's debug log, API call counts, full intermediate polling results "
                             "and tracebacks")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="base directory for saved state (default: $MDE_STATE_DIR or ~/.local/state/mde); "
                             "an instance's state goes to DIR/<instance name>/")
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
    parser = build_parser()
    options = parser.parse_intermixed_args(argv)
    if not options.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        integration = load_integration(options.integration or find_default_integration())
        if options.command == "commands":
            return list_commands(integration, options.args)
        return Session(options, integration, sleep=sleep, clock=clock).run()
    except (UsageError, InstanceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandFailed, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # an uncaught exception from the plugin: one line unless --verbose
        if options.verbose:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}" if str(e) else f"error: {type(e).__name__}", file=sys.stderr)
        return EXIT_FAILED


def find_default_integration() -> Path:
    candidates = [Path.cwd() / DEFAULT_INTEGRATION, Path(__file__).resolve().parent.parent / DEFAULT_INTEGRATION]
    for path in candidates:
        if path.exists():
            return path
    raise UsageError(f"no {DEFAULT_INTEGRATION} in the current directory; name the yml with --integration PATH.yml")


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

    def __init__(self, options: argparse.Namespace, integration: Integration, *,
                 sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.options = options
        self.integration = integration
        self.sleep = sleep
        self.clock = clock
        self.failed = False
        self.progress = Progress(sys.stderr)

    def run(self) -> int:
        name = FETCH_INCIDENTS if self.options.command == "fetch" else self.options.command
        command = self._command(name)
        args = parse_command_args(command, self.options.args)
        instance = self._instance()
        self.store = FileStore(instance_state_dir(instance.name, self.options.state_dir))
        with tempfile.TemporaryDirectory(prefix="mde-run-") as workdir, _environment(instance.env):
            self.workdir = Path(workdir)
            if name == FETCH_INCIDENTS:
                self.fetch(instance)
            else:
                self.run_with_polling(instance, name, args)
        return EXIT_FAILED if self.failed else EXIT_OK

    def _command(self, name: str) -> Command:
        if name in self.integration.commands:
            return self.integration.commands[name]
        close = difflib.get_close_matches(name, self.integration.commands, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `mde commands`"
        raise UsageError(f"unknown command '{name}' for {self.integration.display}{hint}")

    def _instance(self) -> Instance:
        if not self.options.instance:
            raise UsageError("--instance FILE is required to run a command (see mde --help)")
        instance = load_instance(self.options.instance, self.integration)
        for warning in instance.warnings:
            print(warning, file=sys.stderr)
        return instance

    def run_plugin(self, instance: Instance, command: str, args: dict) -> Runtime:
        runtime = Runtime(params=instance.params, args=args, command=command, store=self.store,
                          workdir=self.workdir, verbose=self.options.verbose)
        script = self._script_path()
        with use(runtime), _cwd(self.workdir), _sys_path(script.parent):
            try:
                # XSOAR gives the script a global `demisto`; a unified yml's code relies on it.
                runpy.run_path(str(script), init_globals={"demisto": demistomock}, run_name="__main__")
            except SystemExit as e:  # XSOAR's return_error() exits after reporting; a bare exit is not an error
                if e.code not in (None, 0):
                    runtime.results({"Type": ENTRY_ERROR, "Contents": f"the integration exited with status {e.code}"})
        return runtime

    def _script_path(self) -> Path:
        path = self.integration.script_path
        if path is None:  # a unified yml carries the code itself
            path = self.workdir / f"{self.integration.yml_path.stem}.py"
            path.write_text(self.integration.script, encoding="utf-8")
        elif not path.exists():
            raise UsageError(f"integration code {path} not found (next to {self.integration.yml_path.name})")
        return path

    def run_with_polling(self, instance: Instance, command: str, args: dict) -> None:
        start = self.clock()
        all_entries: list = []
        while True:
            entries = self.run_plugin(instance, command, args).entries
            all_entries += entries
            poll = next((e for e in entries if isinstance(e, dict) and e.get("PollingCommand")), None)
            self.show_entries(command, entries, final=poll is None)
            if poll is None:
                break
            command, args = poll["PollingCommand"], dict(poll.get("PollingArgs") or {})
            timeout = float(poll.get("Timeout") or DEFAULT_POLL_TIMEOUT)
            elapsed = self.clock() - start
            if elapsed >= timeout:
                self.progress.clear()
                raise CommandFailed(f"timed out after {elapsed:.0f} s waiting for {command}")
            wait = self.options.poll_interval_override
            wait = float(poll.get("NextRun") or DEFAULT_NEXT_RUN) if wait is None else wait
            status = first_line(_entry_text(poll) or "", 50)
            self.progress.show(f"{command}: {status} · elapsed {elapsed:.0f}s / timeout {timeout:.0f}s")
            self.sleep(max(0.0, min(wait, timeout - elapsed)))  # the last round runs right at the timeout
        self.progress.clear()
        if self.options.json:
            print(json.dumps(merge_context(all_entries), indent=2, default=str))

    def fetch(self, instance: Instance) -> None:
        with self.store.fetch_lock():  # XSOAR runs one fetch per instance at a time
            runtime = self.run_plugin(instance, FETCH_INCIDENTS, {})
        self.show_entries(FETCH_INCIDENTS, runtime.entries, final=True)
        incidents = runtime.incidents or []
        if self.options.json:
            print(json.dumps(incidents, indent=2, default=str))
        elif incidents:
            rows = [["name", "occurred", "severity"]]
            rows += [[str(i.get("name", "")), str(i.get("occurred", "")), str(i.get("severity", ""))]
                     for i in incidents]
            print("\n".join(render_table(rows, terminal_width())))
        saved = (f"last run saved in {self.store.directory}" if runtime.last_run_saved
                 else "last run not saved (the next fetch starts from the same point)")
        summary = f"fetched {len(incidents)} incident(s); {saved}"
        print(summary, file=sys.stderr if self.options.json else sys.stdout)

    # ------------------------------------------------------------ output

    def show_entries(self, command: str, entries: list, *, final: bool) -> None:
        self.progress.clear()
        for entry in entries:
            if isinstance(entry, str) or not isinstance(entry, dict):
                self._show_text_entry(command, str(entry))
            elif entry.get("Type") == ENTRY_ERROR:
                self.failed = True
                print(f"error: {entry.get('Contents')}", file=sys.stderr)
            elif entry.get("Type") == ENTRY_EXECUTION_METRICS:
                if self.options.verbose:
                    print(f"[metrics] API calls: {metrics_summary(entry)}", file=sys.stderr)
            elif entry.get("FileID"):
                self.save_file(entry)
            elif self.options.raw and final:
                print(_as_text(entry.get("Contents")))
            elif not (self.options.json or self.options.raw):
                self._show_note(entry, full=final or self.options.verbose)

    def _show_text_entry(self, command: str, text: str) -> None:
        if command == TEST_MODULE and text != "ok":  # XSOAR shows anything but "ok" as the test's failure
            self.failed = True
            print(f"error: {text}", file=sys.stderr)
        else:
            print(text)

    def _show_note(self, entry: dict, *, full: bool) -> None:
        text = _entry_text(entry)
        if text is None:
            return
        if not full:
            print(first_line(text, terminal_width()))
        elif entry.get("HumanReadable"):
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
        print(f"saved file: {target} ({target.stat().st_size} bytes)",
              file=sys.stderr if self.options.json or self.options.raw else sys.stdout)


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per update otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.showing = False

    def show(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text[: terminal_width() - 1])
            self.showing = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.showing:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.showing = False


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


# ---------------------------------------------------------------- mde commands

def list_commands(integration: Integration, names: list[str]) -> int:
    if not names:
        for command in integration.commands.values():
            print(_command_title(command))
            _print_arguments(command, full=False)
            print()
        print("* required argument. Details of one command: mde commands NAME")
        return EXIT_OK
    for name in names:
        if name not in integration.commands:
            close = difflib.get_close_matches(name, integration.commands, n=3)
            raise UsageError(f"unknown command '{name}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
        command = integration.commands[name]
        print(_command_title(command))
        if command.description:
            print(f"    {command.description}")
        print("\narguments:" if command.arguments else "\narguments: none")
        _print_arguments(command, full=True)
        if command.outputs:
            print("\noutputs:")
            rows = [["context path", "type", "description"]]
            rows += [[o.context_path, o.type, o.description] for o in command.outputs]
            print("\n".join("    " + line for line in render_table(rows, terminal_width() - 4)))
    return EXIT_OK


def _command_title(command: Command) -> str:
    deprecated = " (deprecated)" if command.deprecated else ""
    return f"{command.name}{deprecated}" + (f"  {_first_sentence(command.description)}" if command.description else "")


def _print_arguments(command: Command, *, full: bool) -> None:
    width = max((len(a.name) + 1 for a in command.arguments), default=0)
    for arg in command.arguments:
        extras = []
        if arg.predefined:
            extras.append("one of " + ", ".join(arg.predefined) + (" (comma-separated list)" if arg.is_array else ""))
        elif arg.is_array:
            extras.append("comma-separated list")
        if arg.default_value is not None:
            extras.append(f"default {arg.default_value}")
        if arg.positional:
            extras.append("may be given without name=")
        if arg.deprecated:
            extras.append("deprecated")
        description = arg.description if full else _first_sentence(arg.description)
        details = description + (f" [{'; '.join(extras)}]" if extras else "")
        print(f"    {(arg.name + ('*' if arg.required else '')).ljust(width)}  {details}")


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    match = re.match(r"(.+?\.)(\s|$)", line)
    return match.group(1) if match else line


if __name__ == "__main__":
    sys.exit(main())

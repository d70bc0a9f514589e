"""A fake XSOAR integration for the runtime's tests: one command per entry kind."""

import os
import sys

import demistomock as demisto

if os.environ.get("FAKE_SENTINEL"):  # lets tests prove the plugin was (not) imported
    with open(os.environ["FAKE_SENTINEL"], "a") as f:
        f.write(demisto.command() + "\n")


def note(contents, readable, context=None):
    return {"Type": 1, "ContentsFormat": "json", "Contents": contents, "HumanReadable": readable,
            "ReadableContentsFormat": "markdown", "EntryContext": context or {}}


def echo(args):
    record = {"ID": "e1", "Message": args["message"], "Limit": args["limit"], "Color": args.get("color")}
    readable = (f"### Echo\n| ID | Message |\n| --- | --- |\n| e1 | {args['message']} |\n\n"
                "See [the docs](https://example.com/docs).")
    return note(record, readable, {"Fake.Echo(val.ID && val.ID == obj.ID)": record})


def send_file(args):
    file_id = demisto.uniqueFile()
    with open(f"{demisto.investigation()['id']}_{file_id}", "wb") as f:
        f.write(b"hello file")
    return {"Type": 3, "File": args["name"], "FileID": file_id, "Contents": "", "ContentsFormat": "text"}


def count_in_context(args):
    context = demisto.getIntegrationContext()
    context["count"] = context.get("count", 0) + 1
    demisto.setIntegrationContext(context)
    return note(context, f"count is {context['count']}")


def poll(args):
    done = int(args.get("round") or 1)
    status = "Succeeded" if done >= int(args["rounds"]) else "Pending"
    action = {"ID": args["action_id"], "Status": status}
    entry = note(action, f"### Action {args['action_id']}\nAction {args['action_id']} is {status}, round {done}",
                 {"Fake.Action(val.ID && val.ID == obj.ID)": action})
    if status == "Pending":
        entry.update({"PollingCommand": "fake-poll", "NextRun": "10", "Timeout": "60",
                      "PollingArgs": {"action_id": args["action_id"], "rounds": args["rounds"], "round": done + 1}})
    return entry


def metrics():
    """A result, then API-execution metrics as an integration on a 6.8+ server reports them."""
    version = demisto.demistoVersion()["version"]
    demisto.results(note({"ID": "m1"}, f"server {version}", {"Fake.Metrics(val.ID && val.ID == obj.ID)": {"ID": "m1"}}))
    demisto.results(metrics_entry())


def metrics_entry() -> dict:
    return {"Type": 19, "ContentsFormat": "text", "Contents": "Metrics reported successfully.",
            "APIExecutionMetrics": [{"Type": "Successful", "APICallsCount": 2},
                                    {"Type": "QuotaError", "APICallsCount": 1}]}


def fetch_incidents():
    last = demisto.getLastRun() or {}
    start = last.get("next", 0)
    size = int(demisto.params()["max_fetch"])
    incidents = [{"name": f"alert {i}", "occurred": f"2024-01-0{i + 1}T00:00:00Z", "severity": 2,
                  "rawJSON": "{}"} for i in range(start, start + size)]
    demisto.setLastRun({"next": start + size})
    demisto.incidents(incidents)


def main():
    command = demisto.command()
    args = demisto.args()
    demisto.debug(f"running {command}")
    if command == "fake-raise":
        raise RuntimeError("boom")
    try:
        if command == "test-module":
            demisto.results("ok" if demisto.params().get("url", "").startswith("https://") else "url must be https")
        elif command == "fetch-incidents":
            fetch_incidents()
        elif command == "fake-echo":
            demisto.results(echo(args))
        elif command == "fake-params":
            demisto.results(note(demisto.params(), ""))
        elif command == "fake-error":
            raise ValueError("the server said no")
        elif command == "fake-file":
            demisto.results(send_file(args))
        elif command == "fake-context":
            demisto.results(count_in_context(args))
        elif command == "fake-poll":
            demisto.results(poll(args))
            demisto.results(metrics_entry())  # every polling round reports its API calls, as the plugin does
        elif command == "fake-metrics":
            metrics()
    except Exception as e:
        demisto.error(str(e))
        demisto.results({"Type": 4, "ContentsFormat": "text", "Contents": f"Failed to execute {command}: {e}"})
        sys.exit(0)  # as XSOAR's return_error does


if __name__ in ("__main__", "__builtin__", "builtins"):
    main()

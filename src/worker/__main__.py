"""``python -m worker``: the RunPod worker, and its commands (schema, graph, models, settings, readahead)
(:data:`USAGE`, which ``--help`` prints)."""

from __future__ import annotations

import json
import logging
import os
import sys


def _quiet_sdk_logs(args: list[str]) -> None:
    """The SDK logs whole jobs and results at DEBUG (its default), and the local test prints the result at
    INFO: base64 images and videos have no place in a log. Unless the user chose a level, use INFO, and WARN
    for the one-job local test, whose outcome the worker's own log lines report."""
    if os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL") or "--rp_log_level" in args:
        return
    local_test = "--rp_serve_api" not in args and not os.environ.get("RUNPOD_WEBHOOK_GET_JOB")
    os.environ["RUNPOD_LOG_LEVEL"] = "WARN" if local_test else "INFO"


USAGE = """\
usage: python -m worker [runpod flags]      (or: wan-worker ...)
       python -m worker schema [--workflow] [--markdown]
       python -m worker graph JOB.json
       python -m worker models {ensure,status,verify} [NAME ...]
       python -m worker settings [--write]
       python -m worker readahead

With no command, the RunPod worker starts and takes jobs from RunPod's job API. runpod's own flags pass
through, among them:
  --rp_serve_api             serve RunPod's local API (/run, /runsync, /status, /docs) instead, on
                             --rp_api_host and --rp_api_port
  --test_input JSON          run this one job, then exit
  --rp_log_level LEVEL       ERROR, WARN, INFO or DEBUG: the runpod SDK's log level
With no RunPod job API in the environment and a test_input.json in the current folder, it runs that one job
and exits 0 on success, 1 on failure.

commands:
  schema      print the JSON schema of a job's input (--workflow: a workflow job's; --markdown: the README's tables)
  graph       print the ComfyUI API graph of a built-in job (the job, or its input), for a workflow job
  models      the default model files on the volume: ensure, status, verify (models --help)
  settings    print the settings' documentation (--write: into README.md and .runpod/hub.json)
  readahead   read the default models into the page cache (start.sh runs it while ComfyUI starts)

The settings are environment variables (README.md, "Settings"). -h, --help: this text.
"""
COMMANDS = ("schema", "models", "settings", "graph", "readahead")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if (args[0] if args else "") not in COMMANDS and {"-h", "--help"} & set(args):
        print(USAGE, end="")  # answered before anything imports runpod
        return 0
    if args[:1] == ["schema"] and "--markdown" in args:
        from .inputdoc import input_tables

        print(input_tables(workflow="--workflow" in args))
        return 0
    if args[:1] == ["schema"]:
        from .schema import input_json_schema

        print(json.dumps(input_json_schema(workflow="--workflow" in args), indent=2, ensure_ascii=False))
        return 0
    if args[:1] == ["settings"]:
        from .settingsdoc import main as settings_main

        return settings_main(args[1:])
    from .config import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"wan-worker: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args[:1] == ["models"]:
        from .models.cli import main as models_main

        return models_main(args[1:], settings)
    if args[:1] == ["graph"]:
        from .passthrough import export_graph

        return export_graph(args[1:], settings)
    if args[:1] == ["readahead"]:
        from .readahead import main as readahead_main

        return readahead_main(settings)

    _quiet_sdk_logs(args)
    import runpod

    from .fitness import checks
    from .handler import handler
    from .memory import retain_freed_memory

    retain_freed_memory(settings.retain_freed_memory_mb * 1024 * 1024)
    for check in checks(settings):  # run by the SDK on RunPod only, before the first job
        runpod.serverless.register_fitness_check(check)

    sys.argv = [sys.argv[0], *args]
    runpod.serverless.start({"handler": handler})
    return 0


if __name__ == "__main__":
    sys.exit(main())

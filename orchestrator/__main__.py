"""Composition root and CLI: the only place that picks concrete adapters.

saga-orchestrator serve [--role all|api|engine|projector]
saga-orchestrator replay SAGA_ID [--at REVISION] [--verify]
saga-orchestrator definitions register FILE
saga-orchestrator projections rebuild
saga-orchestrator eventstore streams|stream|subscriptions|parked …
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from orchestrator.cli import commands
from orchestrator.observability.logging import configure_logging
from orchestrator.settings import ConfigError, load_settings

ROLES = ("all", "api", "engine", "projector")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saga-orchestrator", description="event-sourced saga orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--role", choices=ROLES, default="all", help="what this process does (default: all)")

    replay = sub.add_parser("replay", help="the audit timeline of one saga (reads the store read-only)")
    replay.add_argument("saga_id")
    replay.add_argument("--at", type=int, metavar="REVISION", help="the full state at this revision")
    replay.add_argument("--verify", action="store_true", help="re-fold, check the pinned definition hash")
    replay.add_argument("--tenant", help="only if the saga belongs to this tenant")
    replay.add_argument("--url", help="the service whose read model --verify compares (default: settings)")

    definitions = sub.add_parser("definitions", help="saga definitions (through the running service)")
    dsub = definitions.add_subparsers(dest="action", required=True)
    register = dsub.add_parser("register", help="register a definition from a JSON file")
    register.add_argument("file")
    register.add_argument("--url", help="the service's base URL (default: from the settings)")
    register.add_argument("--tenant", help="X-Tenant-Id to send (auth mode trusted-header)")

    projections = sub.add_parser("projections", help="read models (through the running service)")
    psub = projections.add_subparsers(dest="action", required=True)
    rebuild = psub.add_parser("rebuild", help="rebuild the read models into a new generation, then switch")
    rebuild.add_argument("--url", help="the service's base URL (default: from the settings)")

    store = sub.add_parser("eventstore", help="read-only views of the event store")
    ssub = store.add_subparsers(dest="action", required=True)
    streams = ssub.add_parser("streams", help="streams of a category")
    streams.add_argument("--prefix", default="saga-")
    streams.add_argument("--limit", type=int, default=50)
    one = ssub.add_parser("stream", help="the events of one stream")
    one.add_argument("name")
    ssub.add_parser("subscriptions", help="persistent subscription groups")
    parked = ssub.add_parser("parked", help="parked events of a group")
    parked.add_argument("group", nargs="?", default="orchestrator")
    parked.add_argument("--limit", type=int, default=50)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(commands.dispatch(args, settings))
    except commands.CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

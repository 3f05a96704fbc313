"""Composition root and CLI: the only place that picks concrete adapters.

saga-orchestrator serve [--role all|api|engine|projector]
saga-orchestrator replay SAGA_ID [--at REVISION] [--verify]
saga-orchestrator definitions register FILE
saga-orchestrator projections rebuild
saga-orchestrator api-keys create|list|rotate|revoke …
saga-orchestrator audit export [--since TIME] [--until TIME]
saga-orchestrator auth keypair|token …
saga-orchestrator eventstore streams|stream|subscriptions|parked …
saga-orchestrator eventstore serve [--data-dir DIR] [--host HOST] [--port PORT]
saga-orchestrator dev [--engines N] [--apis N] [--data-dir DIR]

The README's "Command line" section shows each with an example; a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from orchestrator.brief_config import Note
from orchestrator.cli import commands
from orchestrator.observability.logging import configure_logging
from orchestrator.settings import ConfigError, Settings, load_settings_with_notes

ROLES = ("all", "api", "engine", "projector")
#: what each command works on: its ``--help`` description (the README's CLI table shows the same)
WORKS_ON = "works on: "
STORE = WORKS_ON + "the event store, read-only (also while the service runs)"
SERVICE = WORKS_ON + "the running service, through its HTTP API"


def parser() -> argparse.ArgumentParser:
    """The command line; the README's CLI table is this parser's usage, help and description."""
    root = argparse.ArgumentParser(prog="saga-orchestrator", description="event-sourced saga orchestrator")
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the service", description=WORKS_ON + "the configured store and Redis"
    )
    serve.add_argument("--role", choices=ROLES, default="all", help="what this process does (default: all)")

    replay = sub.add_parser(
        "replay",
        help="the audit timeline of one saga",
        description=f"{STORE}; --verify also asks the service's read model",
    )
    replay.add_argument("saga_id", metavar="SAGA_ID")
    replay.add_argument("--at", type=int, metavar="REVISION", help="the full state at this revision")
    replay.add_argument("--verify", action="store_true", help="re-fold, check the pinned definition hash")
    replay.add_argument("--tenant", help="only if the saga belongs to this tenant")
    replay.add_argument("--url", help="the service whose read model --verify compares (default: settings)")

    definitions = sub.add_parser("definitions", help="saga definitions (through the running service)")
    dsub = definitions.add_subparsers(dest="action", required=True)
    register = dsub.add_parser("register", help="register a definition from a JSON file", description=SERVICE)
    register.add_argument("file", metavar="FILE")
    register.add_argument("--url", help="the service's base URL (default: from the settings)")
    register.add_argument("--tenant", help="X-Tenant-Id to send (auth mode trusted-header)")

    projections = sub.add_parser("projections", help="read models (through the running service)")
    psub = projections.add_subparsers(dest="action", required=True)
    rebuild = psub.add_parser(
        "rebuild",
        help="rebuild the read models into a new generation, then switch",
        description=SERVICE,
    )
    rebuild.add_argument("--url", help="the service's base URL (default: from the settings)")

    keys = sub.add_parser("api-keys", help="a tenant's API keys (through the running service)")
    ksub = keys.add_subparsers(dest="action", required=True)
    create = ksub.add_parser(
        "create", help="create a key; its secret is printed this once", description=SERVICE
    )
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--roles", required=True, metavar="ROLE[,ROLE]", help="its scopes, e.g. operator")
    create.add_argument("--expires-in-days", type=float, metavar="DAYS", help="default: never")
    ksub.add_parser("list", help="the tenant's keys (never their secrets)", description=SERVICE)
    rotate = ksub.add_parser("rotate", help="a new secret for a key", description=SERVICE)
    rotate.add_argument("key_id", metavar="KEY_ID")
    rotate.add_argument("--grace-s", type=int, default=0, metavar="S", help="the old secret's grace")
    revoke = ksub.add_parser("revoke", help="revoke a key on every node", description=SERVICE)
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.add_argument("--reason", default="", help="recorded with the revocation")
    for command in (create, ksub.choices["list"], rotate, revoke):
        command.add_argument("--url", help="the service's base URL (default: from the settings)")
        command.add_argument("--tenant", help="X-Tenant-Id to send (auth mode trusted-header)")

    audit = sub.add_parser("audit", help="the audit log (through the running service)")
    asub = audit.add_subparsers(dest="action", required=True)
    export = asub.add_parser(
        "export", help="the tenant's audit records as JSON lines, oldest first", description=SERVICE
    )
    export.add_argument("--since", metavar="TIME", help="ISO 8601 with a zone, e.g. 2026-01-01T00:00:00Z")
    export.add_argument("--until", metavar="TIME", help="records before this time")
    export.add_argument("--url", help="the service's base URL (default: from the settings)")
    export.add_argument("--tenant", help="X-Tenant-Id to send (auth mode trusted-header)")

    auth = sub.add_parser("auth", help="a local key pair and tokens for the jwt auth mode (development)")
    ausub = auth.add_subparsers(dest="action", required=True)
    local = WORKS_ON + "local files only (never the service)"
    pair = ausub.add_parser("keypair", help="write OUT.key (private) and OUT.pub (public)", description=local)
    pair.add_argument("--out", default="jwt", metavar="OUT", help="the files' name (default: jwt)")
    mint = ausub.add_parser("token", help="a token signed with the private key, on stdout", description=local)
    mint.add_argument("--key", default="jwt.key", metavar="FILE", help="the private key (default: jwt.key)")
    mint.add_argument("--tenant", required=True)
    mint.add_argument("--subject", required=True, help="the actor (sub)")
    mint.add_argument("--roles", required=True, metavar="ROLE[,ROLE]")
    mint.add_argument(
        "--issuer", default="saga-orchestrator-dev", help="iss (default: saga-orchestrator-dev)"
    )
    mint.add_argument("--audience", default="saga-orchestrator", help="aud (default: %(default)s)")
    mint.add_argument("--expires-in-s", type=int, default=3600, metavar="S", help="default: 3600")

    store = sub.add_parser("eventstore", help="the event store: read-only views, and serving it over gRPC")
    ssub = store.add_subparsers(dest="action", required=True)
    streams = ssub.add_parser("streams", help="streams of a category", description=STORE)
    streams.add_argument("--prefix", default="saga-", help="the category's prefix (default: saga-)")
    streams.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default: 50)")
    one = ssub.add_parser("stream", help="the events of one stream", description=STORE)
    one.add_argument("name", metavar="STREAM")
    ssub.add_parser("subscriptions", help="persistent subscription groups", description=STORE)
    parked = ssub.add_parser("parked", help="parked events of a group", description=STORE)
    parked.add_argument("group", nargs="?", default="orchestrator", metavar="GROUP")
    parked.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default: 50)")
    serve_store = ssub.add_parser(
        "serve",
        help="serve the embedded store over the KurrentDB client protocol (gRPC)",
        description=WORKS_ON
        + "the embedded store's directory, which it holds (not beside a running service)",
    )
    serve_store.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="the store's directory (default: from the settings)"
    )
    serve_store.add_argument("--host", default="127.0.0.1", help="loopback by default (insecure unless TLS)")
    serve_store.add_argument("--port", type=int, default=2113, help="0 picks a free port (default: 2113)")
    serve_store.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve TLS with this certificate")
    serve_store.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's PEM private key")
    dev = sub.add_parser(
        "dev",
        help="the production shape on this machine: each role its own process, one log stream",
        description=WORKS_ON
        + "a local event store server and Redis it starts, the demo participants, and the roles",
    )
    dev.add_argument("--engines", type=int, default=2, metavar="N", help="engine processes (default: 2)")
    dev.add_argument("--apis", type=int, default=1, metavar="N", help="API processes (default: 1)")
    dev.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="where everything keeps its data (default: settings)"
    )
    return root


def log_notes(notes: Sequence[Note]) -> None:
    """What loading the settings found worth saying (an alias overridden or not used), once logging is set."""
    log = structlog.get_logger("orchestrator.settings")
    for note in notes:
        if note.level == "warning":
            log.warning(note.event, detail=note.message)
        else:
            log.info(note.event, detail=note.message)


def _auth(args: argparse.Namespace) -> int:
    from orchestrator.cli import dev_tokens

    try:
        print(dev_tokens.keypair(args.out) if args.action == "keypair" else dev_tokens.token(args))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    """The roles as processes on the local server (orchestrator.dev); the first API on the configured port."""
    from orchestrator import dev

    if args.engines < 1 or args.apis < 1:
        print("error: --engines and --apis take 1 or more", file=sys.stderr)
        return 2
    environment = {"SAGA_LOG_FORMAT": "console" if settings.log_format == "auto" else settings.log_format}
    deployment = dev.Deployment(
        args.data_dir or settings.event_store.data_dir,
        topology=dev.Topology(apis=args.apis, engines=args.engines),
        redis_url=settings.redis.url,
        configured=sorted(settings.services),
        demo=settings.demo.enabled != "off",
        environment=environment,
        api_port=settings.server.port,
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(dev.run(deployment))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings, notes = load_settings_with_notes()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    log_notes(notes)
    if args.command == "eventstore" and args.action == "serve":
        # A server of its own (its own event loop and signal handling), like `python -m …server`; imported
        # here so that no other command loads gRPC.
        from orchestrator.eventstore.server.__main__ import serve as serve_store
        from orchestrator.eventstore.server.app import ServerOptions
        from orchestrator.eventstore.server.tls import TlsError, certificate_option

        data_dir = args.data_dir or settings.event_store.data_dir
        try:
            certificate = certificate_option(args.tls_cert, args.tls_key)
        except TlsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        options = ServerOptions(data_dir=data_dir, host=args.host, port=args.port, certificate=certificate)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_store(options))
        return 0
    if args.command == "dev":
        return _dev(args, settings)
    if args.command == "auth":
        return _auth(args)
    try:
        return asyncio.run(commands.dispatch(args, settings))
    except commands.CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

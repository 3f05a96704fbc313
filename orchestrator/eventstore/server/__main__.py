"""``python -m orchestrator.eventstore.server --data-dir DIR [--host H] [--port P] [--report FILE]
[--tls-cert FILE --tls-key FILE]``: serve until SIGINT/SIGTERM. Prints one line once it listens (with the
real port when ``--port 0``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from orchestrator.eventstore.server.app import LISTENING, EventStoreServer, ServerOptions
from orchestrator.eventstore.server.tls import TlsError, certificate_option
from orchestrator.observability.logging import configure_logging


def _parse(argv: list[str] | None) -> ServerOptions:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.eventstore.server", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="the embedded store's directory")
    parser.add_argument("--host", default="127.0.0.1", help="loopback by default (insecure unless TLS)")
    parser.add_argument("--port", type=int, default=2113, help="0 picks a free port")
    parser.add_argument("--report", type=Path, default=None, help="append refused requests here (JSON lines)")
    add_tls_arguments(parser)
    args = parser.parse_args(argv)
    try:
        certificate = certificate_option(args.tls_cert, args.tls_key)
    except TlsError as e:
        parser.error(str(e))
    return ServerOptions(
        data_dir=args.data_dir, host=args.host, port=args.port, report=args.report, certificate=certificate
    )


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert`` and ``--tls-key``; ``saga-orchestrator eventstore serve`` declares the same two itself
    (its parser must not import gRPC) and checks them with the same ``certificate_option``."""
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve TLS with this PEM certificate (chain)"
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's PEM private key")


async def serve(options: ServerOptions) -> None:
    """Serve until SIGINT or SIGTERM; print one line once listening."""
    server = await EventStoreServer.start(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{LISTENING} {server.address}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    options = _parse(argv)
    # Logs go to stderr: stdout carries only the LISTENING line a supervisor waits for.
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(options))
    sys.exit(0)


if __name__ == "__main__":
    main()

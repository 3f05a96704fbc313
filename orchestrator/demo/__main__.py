"""``python -m orchestrator.demo [--host H] [--port P]``: serve the demo participants on their own
(docker-compose runs them as the ``demo`` service; the embedded default runs them in-process)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from orchestrator.demo.services import create_demo_app
from orchestrator.observability.logging import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo")
    # 0.0.0.0 by default: this entry point exists for containers, where loopback is unreachable.
    parser.add_argument("--host", default=os.environ.get("DEMO_HOST", "0.0.0.0"))  # noqa: S104
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "9000")))
    args = parser.parse_args(argv)
    configure_logging("auto", os.environ.get("SAGA_LOG_LEVEL", "INFO"))
    web.run_app(create_demo_app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

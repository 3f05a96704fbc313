"""A local server that speaks the KurrentDB client protocol (gRPC) over the embedded store, so that the
KurrentDB adapter and ``kurrentdbclient`` run without a KurrentDB server. Run it as its own process:
``python -m orchestrator.eventstore.server --data-dir DIR --port PORT``.

Only this package and ``eventstore.kurrent`` import kurrentdbclient's modules.
"""

from orchestrator.eventstore.server.app import LISTENING, EventStoreServer, ServerOptions

__all__ = ["LISTENING", "EventStoreServer", "ServerOptions"]

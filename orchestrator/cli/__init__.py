"""The ``saga-orchestrator`` command line: tools beside the service (read-only on the store, or through
the running service's admin API)."""

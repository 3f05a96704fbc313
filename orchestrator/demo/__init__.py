"""Demo participants for the brief's order-processing saga (``order-service``, ``inventory-service``,
``payment-service``), following the participant contract and switchable into failure from the saga's
context. Run standalone with ``python -m orchestrator.demo``."""

from orchestrator.demo.services import DemoServices, create_demo_app, start_demo_services
from orchestrator.demo.state import DemoState
from orchestrator.demo.switches import Mode, SwitchError, parse_switches

__all__ = [
    "DemoServices",
    "DemoState",
    "Mode",
    "SwitchError",
    "create_demo_app",
    "parse_switches",
    "start_demo_services",
]

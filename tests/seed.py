"""The user's brief (seed.md): its order-processing definition and start payload, byte for byte (the
definition keeps the trailing space the brief has after "inventory-service",), shared by every test suite."""

from __future__ import annotations

import json
from typing import Any

SEED_DEFINITION = """{
    "name": "order-processing",
    "version": "1.0.0",
    "steps": [
      {
        "name": "validate-order",
        "service": "order-service",
        "action": "validate",
        "compensation": "cancel-validation",
        "timeout": 30000,
        "retries": 3
      },
      {
        "name": "reserve-inventory",
        "service": "inventory-service",\x20
        "action": "reserve",
        "compensation": "release-reservation",
        "timeout": 15000,
        "retries": 2
      },
      {
        "name": "process-payment",
        "service": "payment-service",
        "action": "charge",
        "compensation": "refund",
        "timeout": 45000,
        "retries": 1
      }
    ]
  }"""

SEED_START = """{
    "saga_name": "order-processing",
    "context": {
      "order_id": "order-123",
      "customer_id": "customer-456",
      "amount": 99.99
    }
  }"""

#: fast retries, so failure paths do not wait seconds between attempts
FAST_RETRY = {"initial_interval": 20, "max_interval": 100, "multiplier": 2.0}


def seed_definition(**overrides: Any) -> dict[str, Any]:
    """The brief's definition as an object, with fast retries and any top-level ``overrides``."""
    definition: dict[str, Any] = json.loads(SEED_DEFINITION)
    definition["retry"] = dict(FAST_RETRY)
    definition.update(overrides)
    return definition

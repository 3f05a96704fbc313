"""The demo services' small domain, in memory: orders validated, stock reserved per order, payments
charged and refunded. ``act`` and ``compensate`` decide one call and apply its effect in one synchronous
step (no ``await`` between check and effect), so concurrent calls cannot interleave inside a decision."""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.demo.ledger import Answer, Ledger, ok, problem
from orchestrator.demo.switches import SERVICES, Mode, Switches

#: the stock a fresh (or reset) inventory holds; "widget" is what an order without ``items`` reserves
DEFAULT_STOCK: Mapping[str, int] = {"widget": 1_000_000, "gadget": 1_000, "gizmo": 10}
DEFAULT_ITEMS = ({"sku": "widget", "quantity": 1},)
#: charges above this amount are declined, as a card issuer would
DEFAULT_PAYMENT_LIMIT = 10_000
DEFAULT_MAX_KEYS = 200_000
_ID_NAMESPACE = uuid.UUID("0f3c7a52-9d4e-5b61-a1f0-3e2d8c4b7a69")


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a demo service, parsed."""

    service: str
    operation: str
    key: str
    attempt: int
    saga_id: str
    tenant: str
    body: bytes
    payload: dict[str, Any]

    @property
    def input(self) -> Any:
        return self.payload.get("input")


@dataclass
class Effect:
    """What an action did, kept by its idempotency key so its compensation can find and undo it."""

    id: str
    saga_id: str
    order_id: str
    undone: bool = False
    amount_cents: int = 0
    currency: str = ""
    items: dict[str, int] = field(default_factory=dict)


def _derived_id(prefix: str, key: str) -> str:
    # Derived from the idempotency key, so a replayed or re-decided answer names the same resource.
    return f"{prefix}-{uuid.uuid5(_ID_NAMESPACE, key)}"


def _cents(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    cents = round(value * 100)
    return cents if cents > 0 else None


def _amount(cents: int) -> float:
    return cents / 100


class DemoState:
    def __init__(
        self,
        *,
        stock: Mapping[str, int] = DEFAULT_STOCK,
        payment_limit: float = DEFAULT_PAYMENT_LIMIT,
        max_keys: int = DEFAULT_MAX_KEYS,
        recent_calls: int = 200,
    ) -> None:
        self._initial_stock = dict(stock)
        self.payment_limit_cents = round(payment_limit * 100)
        self.max_keys = max_keys
        self.recent_calls = recent_calls
        self.reset()

    def reset(self) -> None:
        self.stock: dict[str, int] = dict(self._initial_stock)
        self.ledgers = {name: Ledger(self.max_keys) for name in SERVICES}
        self.effects: dict[str, OrderedDict[str, Effect]] = {name: OrderedDict() for name in SERVICES}
        #: sagas whose "misconfigured" call was answered 401, and those a person has fixed since
        self.misconfigured: set[str] = set()
        self.fixed: set[str] = set()
        self.calls: deque[dict[str, Any]] = deque(maxlen=self.recent_calls)
        self.call_count = 0

    # --- actions ---------------------------------------------------------------------------------------

    def act(self, call: Call, switches: Switches) -> Answer:
        """Decide an action whose key has no recorded answer and is not in flight, and apply its effect."""
        ledger = self.ledgers[call.service]
        if call.key in ledger.tombstones:
            # Its compensation came first: the engine has given this attempt up, so it must not take effect.
            return problem(
                422,
                "compensated-before-arrival",
                "Compensated before it arrived",
                f"a compensation for Idempotency-Key {call.key} arrived first; this action is refused",
                idempotency_key=call.key,
                compensation_idempotency_key=ledger.tombstones[call.key],
            )
        if switches.on(call.service, Mode.MISCONFIGURED) and call.saga_id not in self.fixed:
            self.misconfigured.add(call.saga_id)
            return problem(
                401,
                "demo-misconfigured",
                "Unauthorized",
                f"demo switch: {call.service} rejects the orchestrator's credentials until POST /demo/fix",
                record=False,
            )
        if switches.on(call.service, Mode.FLAKY) and ledger.transient[call.key] < switches.flaky_failures:
            ledger.transient[call.key] += 1
            return problem(
                503,
                "demo-flaky",
                "Service unavailable",
                f"demo switch: {call.service} is flaky "
                f"(failure {ledger.transient[call.key]} of {switches.flaky_failures})",
                record=False,
                retry_after=1,
            )
        if not isinstance(call.input, dict):
            return problem(422, "invalid-input", "Invalid input", "the step input must be a JSON object")
        decide = _ACTIONS[call.service]
        return decide(self, call, switches.on(call.service, Mode.REJECT))

    def _validate(self, call: Call, reject: bool) -> Answer:
        order_id, customer_id = call.input.get("order_id"), call.input.get("customer_id")
        cents = _cents(call.input.get("amount"))
        errors = []
        if not isinstance(order_id, str) or not order_id:
            errors.append("order_id must be a non-empty string")
        if not isinstance(customer_id, str) or not customer_id:
            errors.append("customer_id must be a non-empty string")
        if cents is None:
            errors.append("amount must be a positive number")
        if reject:
            errors.append("demo switch: the order service rejects this order")
        if errors or not isinstance(order_id, str) or cents is None:  # (the checks narrow the types too)
            return problem(422, "invalid-order", "Invalid order", "; ".join(errors), errors=errors)
        effect = self._remember(call, Effect(_derived_id("val", call.key), call.saga_id, order_id))
        return ok(
            {
                "validation_id": effect.id,
                "order_id": order_id,
                "customer_id": customer_id,
                "amount": _amount(cents),
                "status": "validated",
            }
        )

    def _reserve(self, call: Call, reject: bool) -> Answer:
        order_id = str(call.input.get("order_id", call.saga_id))
        items = _items(call.input.get("items", list(DEFAULT_ITEMS)))
        if isinstance(items, str):
            return problem(422, "invalid-items", "Invalid items", items)
        short = {sku: qty for sku, qty in items.items() if self.stock.get(sku, 0) < qty}
        if reject or short:
            detail = "demo switch: out of stock" if reject else f"not enough stock for {', '.join(short)}"
            available = {sku: self.stock.get(sku, 0) for sku in items}
            return problem(422, "out-of-stock", "Out of stock", detail, available=available)
        for sku, qty in items.items():
            self.stock[sku] -= qty
        effect = self._remember(
            call, Effect(_derived_id("res", call.key), call.saga_id, order_id, items=items)
        )
        return ok({"reservation_id": effect.id, "order_id": order_id, "items": items, "status": "reserved"})

    def _charge(self, call: Call, reject: bool) -> Answer:
        order_id = str(call.input.get("order_id", call.saga_id))
        currency = str(call.input.get("currency", "USD"))
        cents = _cents(call.input.get("amount"))
        if cents is None:
            return problem(422, "invalid-amount", "Invalid amount", "amount must be a positive number")
        if reject or cents > self.payment_limit_cents:
            detail = (
                "demo switch: the card issuer declines this payment"
                if reject
                else f"amount {_amount(cents)} exceeds the limit of {_amount(self.payment_limit_cents)}"
            )
            return problem(422, "payment-declined", "Payment declined", detail, amount=_amount(cents))
        effect = self._remember(
            call,
            Effect(
                _derived_id("pay", call.key), call.saga_id, order_id, amount_cents=cents, currency=currency
            ),
        )
        return ok(
            {
                "payment_id": effect.id,
                "order_id": order_id,
                "amount": _amount(cents),
                "currency": currency,
                "status": "charged",
            }
        )

    def _remember(self, call: Call, effect: Effect) -> Effect:
        effects = self.effects[call.service]
        effects[call.key] = effect
        while len(effects) > self.max_keys:
            effects.popitem(last=False)
        return effect

    # --- compensations ---------------------------------------------------------------------------------

    def compensate(self, call: Call, switches: Switches) -> Answer:
        """Undo every action the compensation names (``action_idempotency_keys``: each generation that may
        have taken effect; ``action_idempotency_key`` alone from older engines), leaving a tombstone for
        each that never arrived."""
        keys = _action_keys(call.payload)
        if not keys:
            return problem(
                400,
                "missing-action-key",
                "Missing action_idempotency_key",
                "a compensation must name the actions it undoes in action_idempotency_keys (or"
                " action_idempotency_key)",
                record=False,
            )
        effects = self.effects[call.service]
        to_undo = [effects[k] for k in keys if k in effects and not effects[k].undone]
        for key in keys:
            if key not in effects:
                # Never arrived, still in flight, or refused: nothing to undo, and it must never take effect.
                self.ledgers[call.service].tombstone(key, call.key)
        if not to_undo:
            if all(k not in effects for k in keys):
                return problem(
                    404,
                    "nothing-to-undo",
                    "Nothing to undo",
                    f"no effect recorded for {', '.join(keys)}; a tombstone now refuses a late arrival",
                    action_idempotency_keys=keys,
                )
            return problem(
                410,
                "already-undone",
                "Already undone",
                f"the effects of {', '.join(keys)} were undone by an earlier compensation",
                action_idempotency_keys=keys,
            )
        if switches.on(call.service, Mode.COMPENSATION_FAILS):
            return problem(
                422,
                "demo-cannot-compensate",
                "Cannot compensate",
                f"demo switch: {call.service} cannot undo {', '.join(keys)}",
                action_idempotency_keys=keys,
            )
        results = []
        for effect in to_undo:
            effect.undone = True
            results.append(_UNDO[call.service](self, effect))
        return ok(results[0] if len(results) == 1 else {"undone": results})

    def _cancel_validation(self, effect: Effect) -> dict[str, Any]:
        return {"validation_id": effect.id, "order_id": effect.order_id, "status": "cancelled"}

    def _release(self, effect: Effect) -> dict[str, Any]:
        for sku, qty in effect.items.items():
            self.stock[sku] = self.stock.get(sku, 0) + qty
        return {"reservation_id": effect.id, "order_id": effect.order_id, "status": "released"}

    def _refund(self, effect: Effect) -> dict[str, Any]:
        return {
            "payment_id": effect.id,
            "refund_id": "ref-" + effect.id.removeprefix("pay-"),
            "amount": _amount(effect.amount_cents),
            "currency": effect.currency,
            "status": "refunded",
        }

    # --- control ---------------------------------------------------------------------------------------

    def fix(self, saga_id: str | None) -> list[str]:
        """Clear the "misconfigured" switch for one saga, or for every saga that has hit it so far."""
        fixed = [saga_id] if saga_id else sorted(self.misconfigured)
        self.fixed.update(fixed)
        self.misconfigured.difference_update(fixed)
        return fixed

    def note_call(self, call: Call | None, status: int, *, replayed: bool, service: str, op: str) -> None:
        self.call_count += 1
        self.calls.append(
            {
                "service": service,
                "operation": op,
                "idempotency_key": call.key if call else None,
                "attempt": call.attempt if call else None,
                "saga_id": call.saga_id if call else None,
                "status": status,
                "replayed": replayed,
            }
        )

    def snapshot(self, saga_id: str | None = None) -> dict[str, Any]:
        """What a person wants to see; ``saga_id`` narrows effects and calls to one saga."""

        def effects(service: str) -> list[dict[str, Any]]:
            chosen = [
                {"idempotency_key": key, **asdict(e)}
                for key, e in self.effects[service].items()
                if saga_id is None or e.saga_id == saga_id
            ]
            return chosen if saga_id else chosen[-20:]

        payments = self.effects["payment-service"].values()
        return {
            "stock": dict(self.stock),
            "totals": {
                "validated": len(self.effects["order-service"]),
                "reserved": len(self.effects["inventory-service"]),
                "charged": len(payments),
                "refunded": sum(1 for p in payments if p.undone),
                "net_charged": _amount(sum(p.amount_cents for p in payments if not p.undone)),
            },
            "orders": effects("order-service"),
            "reservations": effects("inventory-service"),
            "payments": effects("payment-service"),
            "tombstones": {s: dict(ledger.tombstones) for s, ledger in self.ledgers.items()},
            "in_flight": {s: sorted(ledger.in_flight) for s, ledger in self.ledgers.items()},
            "misconfigured": {"waiting": sorted(self.misconfigured), "fixed": sorted(self.fixed)},
            "calls": {
                "total": self.call_count,
                "recent": [c for c in self.calls if saga_id is None or c["saga_id"] == saga_id],
            },
        }


def _items(value: Any) -> dict[str, int] | str:
    """``[{"sku", "quantity"}, …]`` as {sku: quantity}, or a message saying what is wrong."""
    if not isinstance(value, list) or not value:
        return "items must be a non-empty list of {sku, quantity}"
    items: dict[str, int] = {}
    for item in value:
        sku = item.get("sku") if isinstance(item, dict) else None
        qty = item.get("quantity", 1) if isinstance(item, dict) else None
        if not isinstance(sku, str) or isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
            return f"invalid item {item!r}: needs a string sku and a positive integer quantity"
        items[sku] = items.get(sku, 0) + qty
    return items


_ACTIONS: Mapping[str, Callable[[DemoState, Call, bool], Answer]] = {
    "order-service": DemoState._validate,
    "inventory-service": DemoState._reserve,
    "payment-service": DemoState._charge,
}
_UNDO: Mapping[str, Callable[[DemoState, Effect], dict[str, Any]]] = {
    "order-service": DemoState._cancel_validation,
    "inventory-service": DemoState._release,
    "payment-service": DemoState._refund,
}


def _action_keys(payload: dict[str, Any]) -> list[str]:
    """The action keys a compensation names, oldest first, without repeats."""
    many = payload.get("action_idempotency_keys")
    one = payload.get("action_idempotency_key")
    named = many if isinstance(many, list) and many else [one]
    keys: list[str] = []
    for key in named:
        if isinstance(key, str) and key and key not in keys:
            keys.append(key)
    return keys

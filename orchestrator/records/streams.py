"""Where sagas and definitions live in the event store: stream names and tenant-scoped identity
(design.md §3). The engine, the application layer and the projections all read these names, so they live
here, beside the codec, and none of those packages imports another for them."""

from __future__ import annotations

import re
import uuid

SAGA_STREAM_PREFIX = "saga-"
DEFINITION_STREAM_PREFIX = "sagadef-"
DEFINITION_REGISTERED = "SagaDefinitionRegistered"
API_KEY_STREAM_PREFIX = "apikeys-"
#: a saga id a client may choose
CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_NAMESPACE = uuid.UUID("0d5c2f0e-7f7b-5a35-9a57-9d7b8c1f4e21")


def saga_stream(saga_id: str) -> str:
    return f"{SAGA_STREAM_PREFIX}{saga_id}"


def saga_id_for(tenant: str, client_id: str | None, idempotency_key: str | None) -> str:
    """``uuid5(tenant | client id)``, ``uuid5(tenant | "idem" | Idempotency-Key)``, else a random id."""
    if client_id is not None:
        return str(uuid.uuid5(_NAMESPACE, f"{tenant}|{client_id}"))
    if idempotency_key is not None:
        return str(uuid.uuid5(_NAMESPACE, f"{tenant}|idem|{idempotency_key}"))
    return str(uuid.uuid4())


def api_key_stream(tenant: str) -> str:
    """A tenant's API keys (tenant names are stream-safe: see the API's tenant pattern)."""
    return f"{API_KEY_STREAM_PREFIX}{tenant}"


def definition_stream(tenant: str, name: str) -> str:
    return f"{DEFINITION_STREAM_PREFIX}{uuid.uuid5(_NAMESPACE, f'{tenant}|{name}')}"

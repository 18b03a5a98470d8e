"""The wire format: one frozen, versioned struct, encoded as JSON.

A message on any broker is the JSON encoding of an `Envelope`. Only JSON types travel, plus
datetime, date, UUID and Decimal (as strings); nothing on the wire is ever turned back into
code or classes. `encode()` runs in the caller, so a value JSON cannot carry fails at
`delay()`, never later in a worker.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from .exceptions import DecodeError, EncodeError

VERSION = 1


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One task message. Copy it with `msgspec.structs.replace` to change a field."""

    v: int = VERSION
    id: str
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str = "celeriac"
    priority: int = 0
    eta: float | None = None  # unix time; None means now
    expires: float | None = None  # unix time after which the task is not run
    retries: int = 0
    headers: dict[str, Any] = {}
    sent_at: float = 0.0
    # Sent once per key within its ttl; a worker does not run it again once it succeeded.
    idempotency_key: str | None = None


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    try:
        return _encoder.encode(envelope)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise EncodeError(
            f"cannot send task {envelope.task!r}: {exc}. Arguments must be JSON types "
            "(str, int, float, bool, None, list, dict) or datetime, date, UUID, Decimal; "
            "pass an id instead of an object (e.g. order.id, not order)."
        ) from None


def decode(body: bytes) -> Envelope:
    try:
        envelope = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        # (RecursionError: JSON nested deeper than Python can follow)
        raise DecodeError(f"not a Celeriac message: {exc}") from None
    if envelope.v != VERSION:
        raise DecodeError(f"unsupported message version {envelope.v} (this worker reads {VERSION})")
    return envelope


_sorted_encoder = msgspec.json.Encoder(decimal_format="string", order="sorted")


def call_digest(args: Any, kwargs: Any) -> str:
    """A hash of a call's arguments that ignores the order of keyword arguments."""
    try:
        return hashlib.sha256(_sorted_encoder.encode([args, kwargs])).hexdigest()
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise EncodeError(f"cannot encode the arguments as JSON: {exc}") from None


def dumps(value: Any) -> bytes:
    """Encode a result or other payload as JSON, with the same types as task arguments."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None


def loads(data: bytes | str) -> Any:
    return msgspec.json.decode(data)

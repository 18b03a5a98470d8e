"""Signed messages: HMAC-SHA256 over the whole encoded envelope.

With `security_key` set, every message is sent as

    celeriac-signed:1:<key id>:<hex HMAC-SHA256 of the envelope>\\n<envelope JSON>

and a worker runs only messages whose signature checks out with a key it knows: the
current `security_key` or one of `security_old_keys` (so keys can be rotated: sign with the
new key, keep accepting the old one until its messages are gone). An unsigned, tampered or
unknown-key message is a `DecodeError`, which the worker dead-letters. The key id is a
digest of the key, so it names the key without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .exceptions import DecodeError

PREFIX = b"celeriac-signed:1:"


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"celeriac key id:" + key).hexdigest()[:16].encode()


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


class Signer:
    """Signs outgoing messages with one key and checks incoming ones against all."""

    def __init__(self, key: str | bytes | None, old_keys: Sequence[str | bytes] = ()) -> None:
        self.key = _as_bytes(key) if key else None
        accepted = [_as_bytes(k) for k in old_keys if k]
        if self.key is not None:
            accepted.append(self.key)
        self.keys = {key_id(k): k for k in accepted}

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def sign(self, body: bytes) -> bytes:
        if self.key is None:
            return body
        digest = hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()
        return PREFIX + key_id(self.key) + b":" + digest + b"\n" + body

    def verify(self, message: bytes) -> bytes:
        """The envelope bytes of a message whose signature checks out, else DecodeError."""
        signed = message.startswith(PREFIX)
        if not self.keys:
            if signed:
                raise DecodeError("signed message, but this worker has no security_key")
            return message
        if not signed:
            raise DecodeError("unsigned message (security_key is set: every message is signed)")
        header, newline, body = message[len(PREFIX) :].partition(b"\n")
        kid, _, digest = header.partition(b":")
        key = self.keys.get(kid)
        if not newline or key is None:
            raise DecodeError("message signed with a key this worker does not know")
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, digest):
            raise DecodeError("bad signature: the message was changed after it was signed")
        return body

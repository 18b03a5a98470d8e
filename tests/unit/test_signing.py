"""Signed messages: unsigned, tampered and unknown-key messages never run."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celeriac, DecodeError
from celeriac.brokers import Outgoing
from celeriac.envelope import Envelope, encode
from celeriac.signing import Signer


def test_sign_and_verify_round_trip() -> None:
    signer = Signer("k1")
    body = encode(Envelope(id="1", task="t", args=[1]))
    signed = signer.sign(body)
    assert signed != body and signed.endswith(body)
    assert signer.verify(signed) == body


def test_tampered_unsigned_and_unknown_key_are_refused() -> None:
    signer = Signer("k1")
    signed = signer.sign(encode(Envelope(id="1", task="t", args=[1])))
    with pytest.raises(DecodeError, match="bad signature"):
        signer.verify(signed.replace(b"[1]", b"[2]"))
    with pytest.raises(DecodeError, match="unsigned message"):
        signer.verify(encode(Envelope(id="1", task="t")))
    with pytest.raises(DecodeError, match="does not know"):
        Signer("other").verify(signed)
    with pytest.raises(DecodeError, match="no security_key"):
        Signer(None).verify(signed)


def test_rotation_accepts_old_keys_and_signs_with_the_new_one() -> None:
    body = encode(Envelope(id="1", task="t"))
    old = Signer("old").sign(body)
    rotated = Signer("new", old_keys=["old"])
    assert rotated.verify(old) == body
    assert Signer("new").verify(rotated.sign(body)) == body
    with pytest.raises(DecodeError):
        Signer("old").verify(rotated.sign(body))


def test_worker_runs_signed_tasks_and_dead_letters_the_rest(
    worker_for: Any, wait_until: Any
) -> None:
    app = Celeriac("signed", broker="memory://", security_key="s3cret")

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    forged = encode(Envelope(id="forged", task=add.name, args=[1, 2]))
    tampered = app.encode(Envelope(id="tampered", task=add.name, args=[1, 2]))
    tampered = tampered.replace(b"[1,2]", b"[9,9]")
    with worker_for(app):
        assert add.delay(2, 3).get(timeout=10) == 5
        app.broker.publish([Outgoing("forged", "celeriac", forged)])
        app.broker.publish([Outgoing("tampered", "celeriac", tampered)])
        wait_until(lambda: len(app.broker.dead_letters()) == 2, what="two dead letters")
        assert add.delay(1, 1).get(timeout=10) == 2
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert "unsigned" in reasons["forged"]
    assert "bad signature" in reasons["tampered"]
    assert app.AsyncResult("forged").state == "PENDING"  # never ran, nothing stored


def test_a_retried_message_is_signed_again(worker_for: Any) -> None:
    app = Celeriac("signed", broker="memory://", security_key="s3cret")

    @app.task(bind=True)
    def once_more(self: Any) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return self.request.retries

    with worker_for(app):
        assert once_more.delay().get(timeout=10) == 1
    assert app.broker.dead_letters() == []

from __future__ import annotations

import pytest

from celeriac.envelope import Envelope, decode, encode
from celeriac.exceptions import DecodeError


def test_round_trip() -> None:
    envelope = Envelope(id="1", task="t", args=[1, "a", None], kwargs={"k": [1.5]}, priority=3)
    assert decode(encode(envelope)) == envelope


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"id": "1"}',
        b'{"id": 1, "task": "t"}',
        b'{"v": 99, "id": "1", "task": "t"}',
    ],
)
def test_garbage_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(body)

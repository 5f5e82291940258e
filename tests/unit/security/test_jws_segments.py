"""The worker decodes a JWS's base64url segments by PyJWT's own rule, checked in C: the same
segments accepted, with the same bytes, and the same refused (GHSA-hxm8-2xgr-2p9m: no byte
outside the alphabet, canonical encodings only, at most two '=' of padding)."""

from __future__ import annotations

import base64

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.api_jws import PyJWS

from ledgerflow.workers.auth import decode_segment

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Mostly the alphabet, with the bytes a forged token would try: padding, '+', '/', '.', junk.
segments = st.one_of(
    st.text(alphabet=ALPHABET + "=", max_size=40).map(str.encode),
    st.text(alphabet=ALPHABET + "=+/.! \n\x00é", max_size=40).map(str.encode),
    st.binary(max_size=30).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")),
    st.binary(max_size=30).map(base64.urlsafe_b64encode),
)


def upstream(segment: bytes) -> bytes | str:
    try:
        return PyJWS._decode_base64url_segment(segment, "header")
    except jwt.DecodeError as error:
        return f"refused: {error}"


def ours(segment: bytes) -> bytes | str:
    try:
        return decode_segment(segment, "header")
    except jwt.DecodeError as error:
        return f"refused: {error}"


@settings(max_examples=3_000, deadline=None)
@given(segments)
def test_every_segment_is_judged_as_pyjwt_judges_it(segment: bytes) -> None:
    assert ours(segment) == upstream(segment)


@pytest.mark.parametrize(
    "segment", [b"!!!!", b"ab+c", b"ab/c", b"abc===", b"ab=c", b"a", b"eyJ\x00", b"YQ=", b"YR"]
)
def test_junk_and_non_canonical_segments_are_refused(segment: bytes) -> None:
    assert str(ours(segment)).startswith("refused"), segment
    assert str(upstream(segment)).startswith("refused"), segment

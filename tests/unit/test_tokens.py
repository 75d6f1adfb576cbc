from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import pytest

from gateway_core.tokens import Claims, InvalidToken, decode_token, encode_token, valid_user_id

SECRET = "unit-secret-" + "0123456789abcdef" * 4


def sign(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def refused(token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        decode_token(token, secret=SECRET)
    return str(info.value)


def test_decode_valid_token():
    exp = int(time.time()) + 60
    claims = decode_token(sign({"sub": "user-1", "exp": exp, "meta": {"plan": "pro"}}),
                          secret=SECRET)
    assert claims == Claims(user_id="user-1", expires_at=exp, meta={"plan": "pro"})


def test_meta_defaults_to_empty():
    token = sign({"sub": "u", "exp": int(time.time()) + 60})
    assert decode_token(token, secret=SECRET).meta == {}


def test_missing_token():
    assert refused("") == "token missing"


def test_expired():
    assert refused(sign({"sub": "u", "exp": int(time.time()) - 10})) == "token expired"


def test_leeway_accepts_a_recently_expired_token():
    token = sign({"sub": "u", "exp": int(time.time()) - 10})
    assert decode_token(token, secret=SECRET, leeway_s=60).user_id == "u"


def test_bad_signature():
    token = sign({"sub": "u", "exp": int(time.time()) + 60}, secret="another-secret-" + "x" * 32)
    assert refused(token) == "bad signature"


def test_other_algorithms_are_refused():
    token = sign({"sub": "u", "exp": int(time.time()) + 60}, algorithm="HS512")
    assert refused(token) == "malformed token"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 40])
def test_malformed(token):
    assert refused(token) == "malformed token"


def test_missing_sub():
    assert refused(sign({"exp": int(time.time()) + 60})) == "malformed token"


def test_missing_exp():
    assert refused(sign({"sub": "u"})) == "malformed token"


@pytest.mark.parametrize("sub", ["a b", "ü", "x" * 129, "u/1", ""])
def test_bad_sub(sub):
    message = refused(sign({"sub": sub, "exp": int(time.time()) + 60}))
    assert message in {"bad sub", "malformed token"}
    if sub:  # PyJWT itself accepts any non-empty string subject
        assert message == "bad sub"


def nested_list(levels: int) -> list:
    value: list = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("meta", [[1], "x", 3])
def test_meta_must_be_an_object(meta):
    token = sign({"sub": "u", "exp": int(time.time()) + 60, "meta": meta})
    assert refused(token) == "meta must be an object"


def test_not_before_in_the_future():
    now = int(time.time())
    token = sign({"sub": "u", "exp": now + 600, "nbf": now + 300})
    assert refused(token) == "token not yet valid"


def test_encode_round_trip():
    token, expires = encode_token(user_id="u:1@x", ttl_s=120, secret=SECRET,
                                  meta={"k": [1, 2]}, now=time.time())
    claims = decode_token(token, secret=SECRET)
    assert claims.user_id == "u:1@x"
    assert claims.meta == {"k": [1, 2]}
    assert claims.expires_at == expires


def test_encode_with_explicit_now():
    token, expires = encode_token(user_id="u", ttl_s=100, secret=SECRET, now=1_000_000.9)
    assert expires == 1_000_100
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert raw == {"sub": "u", "iat": 1_000_000, "exp": 1_000_100}
    # Long expired, so the gateway refuses it.
    assert refused(token) == "token expired"


def test_valid_user_id():
    assert valid_user_id("A-z_0.9:@")
    assert not valid_user_id(None)
    assert not valid_user_id("a\n")
    assert not valid_user_id("\na")


def test_sub_with_a_trailing_newline_is_refused():
    assert refused(sign({"sub": "u1\n", "exp": int(time.time()) + 60})) == "bad sub"


@pytest.mark.parametrize("meta", [
    {"name": "\ud800"},
    {"\udfff": 1},
    {"n": float("inf")},
    {"n": 10**400},
    {"nul": "a\x00b"},
    {"deep": nested_list(70)},
])
def test_a_meta_no_database_or_client_takes_is_refused(meta):
    # Signed by a business system, not minted by the API: decode is the only check.
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60, "meta": meta}, SECRET,
                       algorithm="HS256")
    with pytest.raises(InvalidToken, match=r"^meta "):
        decode_token(token, secret=SECRET)


def test_claims_nested_past_the_parsers_stack_are_a_malformed_token():
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(
        b'{"sub":"u1","exp":9999999999,"meta":' + b"[" * 5000 + b"]" * 5000 + b"}"
    ).rstrip(b"=")
    signing_input = header + b"." + body
    signature = base64.urlsafe_b64encode(
        hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(InvalidToken, match="malformed token"):
        decode_token((signing_input + b"." + signature).decode(), secret=SECRET)

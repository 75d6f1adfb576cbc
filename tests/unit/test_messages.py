from __future__ import annotations

import json

import pytest

from gateway_core.messages import (
    BadMessage,
    ControlMessage,
    PushMessage,
    decode,
    decode_many,
    encode,
    encode_batch,
)


def push(**overrides) -> PushMessage:
    fields = dict(id="p1", users=("u1", "u2"), data_json='{"n":1}', topic="news",
                  accepted_ms=1_700_000_000_000, expires_ms=1_700_000_060_000,
                  published_ms=1_700_000_000_005)
    fields.update(overrides)
    return PushMessage(**fields)


def control(**overrides) -> ControlMessage:
    fields = dict(id="c1", action="disconnect", users=("u1",), session_ids=("s1", "s2"),
                  reason="banned", issued_ms=1_700_000_000_000)
    fields.update(overrides)
    return ControlMessage(**fields)


def valid_push_body(**overrides) -> dict:
    body = json.loads(encode(push()))
    body.update(overrides)
    return body


@pytest.mark.parametrize("message", [
    push(),
    push(users=None, topic=None, expires_ms=None, published_ms=None),
    push(data_json='"caf\\u00e9 \u2603"'),
    control(),
    control(users=(), session_ids=("s9",), reason=""),
])
def test_round_trip(message):
    raw = encode(message)
    assert isinstance(raw, bytes)
    decoded = decode(raw)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decode(raw.decode()) == message


def test_broadcast_encodes_users_as_null():
    body = json.loads(encode(push(users=None)))
    assert body["users"] is None
    assert body["kind"] == "push"
    assert body["v"] == 1
    assert decode(encode(push(users=None))).users is None


def test_published_ms_is_optional_on_the_wire():
    body = valid_push_body()
    del body["published_ms"]
    assert decode(json.dumps(body)).published_ms is None


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe\x00garbage", b"", b"{"])
def test_not_json(raw):
    with pytest.raises(BadMessage):
        decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"push"', b"null"])
def test_not_an_object(raw):
    with pytest.raises(BadMessage, match="not a JSON object"):
        decode(raw)


@pytest.mark.parametrize("version", [None, 0, 3, "1"])
def test_wrong_version(version):
    body = valid_push_body(v=version)
    with pytest.raises(BadMessage, match="unsupported version"):
        decode(json.dumps(body))


def test_unknown_kind():
    with pytest.raises(BadMessage, match="unknown kind"):
        decode(json.dumps(valid_push_body(kind="telegram")))


def test_unknown_control_action():
    body = json.loads(encode(control()))
    body["action"] = "reboot"
    with pytest.raises(BadMessage):
        decode(json.dumps(body))


@pytest.mark.parametrize("overrides", [
    {"id": 7},
    {"users": [1, 2]},
    {"users": "u1"},
    {"users": {"u1": True}},
    {"data_json": {"n": 1}},
    {"topic": 5},
    {"accepted_ms": None},
    {"accepted_ms": "soon"},
    {"accepted_ms": "123"},
    {"accepted_ms": True},
    {"expires_ms": "later"},
    {"expires_ms": True},
    {"published_ms": [1]},
])
def test_wrong_types_in_a_push(overrides):
    with pytest.raises(BadMessage):
        decode(json.dumps(valid_push_body(**overrides)))


@pytest.mark.parametrize("missing", ["id", "users", "data_json", "topic", "accepted_ms",
                                     "expires_ms", "kind"])
def test_missing_fields_in_a_push(missing):
    body = valid_push_body()
    del body[missing]
    with pytest.raises(BadMessage):
        decode(json.dumps(body))


@pytest.mark.parametrize("overrides", [
    {"users": "u1"},
    {"users": [None]},
    {"session_ids": "s1"},
    {"reason": None},
    {"issued_ms": None},
    {"issued_ms": "1700000000000"},
])
def test_wrong_types_in_a_control(overrides):
    body = json.loads(encode(control()))
    body.update(overrides)
    with pytest.raises(BadMessage):
        decode(json.dumps(body))


def test_frame_is_json_with_exact_keys_and_data_as_is():
    message = push(data_json='{"b":2,"a":[1,2,{"x":null}]}', topic='quo"te')
    frame = message.frame()
    parsed = json.loads(frame)
    assert list(parsed) == ["type", "id", "topic", "data", "ts"]
    assert parsed == {"type": "push", "id": "p1", "topic": 'quo"te',
                      "data": {"b": 2, "a": [1, 2, {"x": None}]}, "ts": 1_700_000_000_000}
    # The data's text is embedded verbatim, not re-serialised.
    assert ',"data":{"b":2,"a":[1,2,{"x":null}]},' in frame


def test_frame_with_null_topic_and_scalar_data():
    parsed = json.loads(push(topic=None, data_json="42").frame())
    assert parsed["topic"] is None
    assert parsed["data"] == 42


def test_expiry():
    assert push(expires_ms=None).expired(10**15) is False
    assert push(expires_ms=100).expired(99) is False
    assert push(expires_ms=100).expired(100) is True
    order = control(issued_ms=1000)
    assert order.expired(1000 + ControlMessage.ttl_ms - 1) is False
    assert order.expired(1000 + ControlMessage.ttl_ms) is True


def test_a_batch_decodes_into_its_pushes_in_order():
    pushes = [push(id="p1"), push(id="p2", users=None, topic=None, published_ms=None)]
    assert decode_many(encode_batch(pushes)) == pushes


def test_decode_many_takes_single_messages_too():
    assert decode_many(encode(control())) == [control()]
    assert decode_many(encode(push())) == [push()]


@pytest.mark.parametrize("pushes", [[], "x", [{"kind": "control"}], [1]])
def test_malformed_batches_are_bad_messages(pushes):
    raw = json.dumps({"v": 1, "kind": "push_batch", "pushes": pushes})
    with pytest.raises(BadMessage):
        decode_many(raw)


def test_a_batch_is_not_a_single_message():
    with pytest.raises(BadMessage, match="unknown kind"):
        decode(encode_batch([push()]))

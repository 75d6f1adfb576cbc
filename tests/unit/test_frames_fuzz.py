"""Generated client frames: whatever a client sends, the frame parser answers with a frame
or a ``BadFrame``, and the connection's handler keeps serving (PROTOCOL.md section 1)."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewaysite.conf import gateway_settings
from sessions_app import frames
from sessions_app.consumers import GatewayConsumer
from sessions_app.tokens import encode_token

pytestmark = pytest.mark.usefixtures("node")

# Any JSON value, with lone surrogates and odd numbers in it.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(alphabet=st.characters(codec=None)),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def frame_texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["json", "object", "nested", "number", "raw"]))
    if kind == "json":
        return json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    if kind == "object":
        body = draw(st.dictionaries(st.sampled_from(["type", "id", "x"]), json_values))
        return json.dumps(body)
    if kind == "nested":
        depth = draw(st.integers(min_value=1, max_value=3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = draw(st.sampled_from(["", "1", "null"]))
        return '{"type":' * draw(st.integers(0, 1)) + opener * depth + inner + closer * depth
    if kind == "number":
        digits = draw(st.integers(min_value=1, max_value=5000))
        return '{"type": "ack", "id": ' + "9" * digits + draw(st.sampled_from(["", "e999"])) + "}"
    return draw(st.text(alphabet=st.characters(codec=None), max_size=200))


@given(frame_texts())
@settings(max_examples=400, deadline=None)
def test_parse_answers_a_frame_or_bad_frame_and_nothing_else(text: str) -> None:
    try:
        frame = frames.parse(text)
    except frames.BadFrame as exc:
        reply = json.loads(frames.error(str(exc)))  # the error frame is JSON a client parses
        assert reply["code"] == "bad_frame"
    else:
        assert frame["type"] in ("ping", "ack")
        if frame["type"] == "ack":
            assert isinstance(frame["id"], str)


# (The test communicator cannot send an empty text frame; parse() gets those above.)
@given(st.lists(frame_texts().filter(bool), min_size=1, max_size=5))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@override_settings(GATEWAY_MAX_FRAME_BYTES=1 << 16, GATEWAY_MAX_FRAMES_PER_MINUTE=1000)
async def test_the_connection_keeps_serving_whatever_it_is_sent(texts: list[str]) -> None:
    token, _ = encode_token(user_id="fuzz", ttl_s=600, secret=gateway_settings.jwt_secret)
    comm = WebsocketCommunicator(GatewayConsumer.as_asgi(), f"/ws/?token={token}")
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["type"] == "welcome"
    for text in texts:
        await comm.send_to(text_data=text)
        if text != frames.PING_TEXT:
            reply = await comm.receive_json_from()
            assert reply["type"] in ("pong", "error"), reply
    await comm.send_to(text_data=frames.PING_TEXT)
    assert (await comm.receive_json_from())["type"] == "pong"
    await comm.disconnect()

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from push_app import validation
from push_app.validation import (
    PushRequest,
    RequestInvalid,
    batch_items,
    disconnect_reason,
    push_request,
    token_request,
)


def refused(fn, body) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        fn(body)
    return info.value


def test_a_full_push_request():
    req = push_request({"users": ["u1", "u2"], "data": {"a": [1, "é"]}, "topic": "t",
                        "ttl": 30, "idempotency_key": "k1"})
    assert req == PushRequest(users=("u1", "u2"), data_json='{"a":[1,"é"]}', topic="t",
                              ttl_s=30, idempotency_key="k1")
    assert req.targets == 2


def test_broadcast_request():
    req = push_request({"broadcast": True, "data": None})
    assert req.users is None
    assert req.targets == "all"
    assert req.data_json == "null"


def test_duplicate_users_are_dropped_in_order():
    req = push_request({"users": ["b", "a", "b", "a", "c"], "data": 1})
    assert req.users == ("b", "a", "c")
    assert req.targets == 3


@pytest.mark.parametrize("body", [[], "push", None, 3])
def test_body_must_be_an_object(body):
    assert refused(push_request, body).status == 400


def test_data_is_required():
    exc = refused(push_request, {"users": ["u1"]})
    assert (exc.status, exc.code, exc.fields) == (400, "invalid", {"data": "required"})


@pytest.mark.parametrize("users", [None, [], "u1", {"u1": 1}])
def test_users_must_be_a_non_empty_list(users):
    body = {"data": 1} if users is None else {"users": users, "data": 1}
    exc = refused(push_request, body)
    assert exc.status == 400
    assert list(exc.fields) == ["users"]


@pytest.mark.parametrize("user", ["", "a b", "ü", "x" * 129, 7, None, ["u"], "u/1", "u#1",
                                  "u1\n"])
def test_user_ids_must_match_the_pattern(user):
    exc = refused(push_request, {"users": ["ok", user], "data": 1})
    assert list(exc.fields) == ["users"]
    assert "is not a user id" in exc.detail


@pytest.mark.parametrize("user", ["a", "x" * 128, "A-Z_a.z:0@9"])
def test_user_ids_at_the_edges_pass(user):
    assert push_request({"users": [user], "data": 1}).users == (user,)


def test_max_users_per_push():
    with override_settings(GATEWAY_MAX_USERS_PER_PUSH=3):
        assert push_request({"users": ["a", "b", "c"], "data": 1}).targets == 3
        exc = refused(push_request, {"users": ["a", "b", "c", "d"], "data": 1})
    assert exc.status == 400
    assert "at most 3 users" in exc.fields["users"]


def test_broadcast_with_users_is_refused():
    exc = refused(push_request, {"broadcast": True, "users": ["u1"], "data": 1})
    assert exc.fields == {"users": "not allowed with broadcast"}
    exc = refused(push_request, {"broadcast": True, "users": [], "data": 1})
    assert list(exc.fields) == ["users"]


def test_broadcast_false_needs_users():
    assert push_request({"broadcast": False, "users": ["u"], "data": 1}).users == ("u",)
    assert list(refused(push_request, {"broadcast": False, "data": 1}).fields) == ["users"]


@pytest.mark.parametrize("flag", [1, "true", None, 0])
def test_broadcast_must_be_a_bool(flag):
    exc = refused(push_request, {"broadcast": flag, "data": 1})
    assert list(exc.fields) == ["broadcast"]


MAX_TTL_S = 7 * 24 * 3600  # GATEWAY_MAX_TTL's default


@pytest.mark.parametrize("ttl", [-1, MAX_TTL_S + 1, 1.5, "60", True, False])
def test_ttl_bounds_and_types(ttl):
    exc = refused(push_request, {"users": ["u"], "data": 1, "ttl": ttl})
    assert list(exc.fields) == ["ttl"]


@pytest.mark.parametrize("ttl", [1, MAX_TTL_S])
def test_ttl_edges_pass(ttl):
    assert push_request({"users": ["u"], "data": 1, "ttl": ttl}).ttl_s == ttl


def test_ttl_zero_is_live_only_as_no_ttl():
    assert push_request({"users": ["u"], "data": 1, "ttl": 0}).ttl_s is None


@pytest.mark.parametrize("topic", ["", "x" * 201, 5, ["t"]])
def test_topic_rules(topic):
    exc = refused(push_request, {"users": ["u"], "data": 1, "topic": topic})
    assert list(exc.fields) == ["topic"]


@pytest.mark.parametrize("key", ["", "k" * 201, 12])
def test_idempotency_key_rules(key):
    exc = refused(push_request, {"users": ["u"], "data": 1, "idempotency_key": key})
    assert list(exc.fields) == ["idempotency_key"]


def test_unknown_field_is_named():
    exc = refused(push_request, {"users": ["u"], "data": 1, "zeta": 1, "alpha": 2})
    assert exc.fields == {"alpha": "unknown field"}


def test_payload_size_limit_is_413_and_counts_utf8_bytes():
    data = "é" * 5  # 10 bytes in UTF-8, plus two quotes
    with override_settings(GATEWAY_MAX_PAYLOAD_BYTES=12):
        assert push_request({"users": ["u"], "data": data}).data_json == json.dumps(
            data, ensure_ascii=False)
    with override_settings(GATEWAY_MAX_PAYLOAD_BYTES=11):
        exc = refused(push_request, {"users": ["u"], "data": data})
    assert (exc.status, exc.code) == (413, "payload_too_large")
    assert "12 bytes" in exc.detail and "11" in exc.detail


def test_batch_items():
    assert batch_items({"pushes": [{}, {"x": 1}]}) == [{}, {"x": 1}]
    for body in [None, [], {"pushes": "x"}, {"pushes": {}}, {}]:
        assert list(refused(batch_items, body).fields) == ["pushes"]
    assert refused(batch_items, {"pushes": []}).fields == {"pushes": "empty"}
    assert refused(batch_items, {"pushes": [{}], "more": 1}).fields == {"more": "unknown field"}
    with override_settings(GATEWAY_MAX_BATCH=2):
        assert len(batch_items({"pushes": [1, 2]})) == 2
        exc = refused(batch_items, {"pushes": [1, 2, 3]})
    assert "at most 2 pushes" in exc.fields["pushes"]


def test_token_request_defaults_and_values():
    req = token_request({"user": "u1"})
    assert (req.user_id, req.ttl_s, req.meta) == ("u1", 3600, {})
    req = token_request({"user": "u1", "ttl": 60, "meta": {"plan": "pro"}})
    assert (req.ttl_s, req.meta) == (60, {"plan": "pro"})


@pytest.mark.parametrize("body, field", [
    ({}, "user"),
    ({"user": "a b"}, "user"),
    ({"user": 5}, "user"),
    ({"user": "u", "ttl": 0}, "ttl"),
    ({"user": "u", "ttl": True}, "ttl"),
    ({"user": "u", "ttl": "60"}, "ttl"),
    ({"user": "u", "meta": []}, "meta"),
    ({"user": "u", "meta": "x"}, "meta"),
    ({"user": "u", "meta": {"blob": "x" * 2048}}, "meta"),
    ({"user": "u", "metadata": {}}, "metadata"),
])
def test_token_request_rules(body, field):
    assert list(refused(token_request, body).fields) == [field]


def test_token_ttl_limit_follows_settings():
    with override_settings(GATEWAY_MAX_TOKEN_TTL_S=120):
        assert token_request({"user": "u", "ttl": 120}).ttl_s == 120
        assert list(refused(token_request, {"user": "u", "ttl": 121}).fields) == ["ttl"]


def test_token_request_body_must_be_an_object():
    exc = refused(token_request, ["u"])
    assert exc.status == 400 and exc.fields is None


def test_disconnect_reason():
    assert disconnect_reason({}) == ""  # what DRF makes of an empty body
    assert refused(disconnect_reason, None).status == 400  # a JSON null
    assert disconnect_reason({"reason": "spam"}) == "spam"
    assert disconnect_reason({"reason": "r" * 200}) == "r" * 200
    assert refused(disconnect_reason, {"reason": "x", "reasons": "y"}).fields == {
        "reasons": "unknown field"}
    assert list(refused(disconnect_reason, {"reason": "r" * 201}).fields) == ["reason"]
    assert list(refused(disconnect_reason, {"reason": 5}).fields) == ["reason"]
    assert refused(disconnect_reason, "spam").status == 400


def test_errors_name_the_field_in_the_detail():
    exc = validation._invalid("ttl", "bad")
    assert exc.detail == "ttl: bad"
    assert exc.fields == {"ttl": "bad"}


# --- what every later stage accepts (issue #10): storable, encodable, parseable ---------

def nested(levels: int, leaf: object = 1) -> object:
    """``levels`` arrays around ``leaf``, built without recursion."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


SURROGATE = "\ud800"


@pytest.mark.parametrize(("body", "field"), [
    ({"users": ["u"], "data": 1, "topic": SURROGATE}, "topic"),
    ({"users": ["u"], "data": 1, "topic": "ok" + SURROGATE}, "topic"),
    ({"users": ["u"], "data": SURROGATE}, "data"),
    ({"users": ["u"], "data": {"k": ["x\udfff"]}}, "data"),
    ({"users": ["u"], "data": {SURROGATE: 1}}, "data"),
    ({"users": ["u"], "data": 1, "idempotency_key": SURROGATE}, "idempotency_key"),
    ({"users": [SURROGATE], "data": 1}, "users"),
])
def test_lone_surrogates_are_refused_where_they_are(body, field):
    exc = refused(push_request, body)
    assert (exc.status, exc.code, list(exc.fields or {})) == (400, "invalid", [field])
    exc.detail.encode()  # the error itself must be encodable: it is sent as UTF-8


def test_an_unknown_field_named_with_a_surrogate_is_refused_with_an_encodable_error():
    exc = refused(push_request, {"users": ["u"], "data": 1, SURROGATE: 1})
    assert exc.status == 400
    json.dumps(exc.fields, ensure_ascii=False).encode()
    exc.detail.encode()


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan"), 10 ** 400,
                                   -(10 ** 400), 2 ** 1024 - 2 ** 970],
                         ids=["inf", "-inf", "nan", "1e400", "-1e400", "rounds-to-inf"])
def test_numbers_that_clients_would_read_as_infinity_are_refused(number):
    exc = refused(push_request, {"users": ["u"], "data": {"n": [number]}})
    assert (exc.status, list(exc.fields or {})) == (400, ["data"])


@pytest.mark.parametrize("number", [1.7976931348623157e308, 2 ** 1024 - 2 ** 970 - 1, -(2 ** 1000),
                                    10 ** 300, 0.0, -0.5],
                         ids=["max", "rounds-to-max", "-2^1000", "1e300", "0", "-0.5"])
def test_large_but_finite_numbers_pass(number):
    assert push_request({"users": ["u"], "data": number}).data_json == json.dumps(number)


def test_nesting_is_at_most_64_levels_counting_the_body():
    # The body is level 1, so `data` may hold 63 levels of arrays and objects.
    assert push_request({"users": ["u"], "data": nested(63)}).data_json.count("[") == 63
    exc = refused(push_request, {"users": ["u"], "data": nested(64)})
    assert (exc.status, list(exc.fields or {})) == (400, ["data"])
    assert "64" in exc.detail


def test_very_deep_nesting_is_refused_without_recursion():
    exc = refused(push_request, {"users": ["u"], "data": nested(200_000)})
    assert list(exc.fields or {}) == ["data"]


def test_batch_items_count_their_depth_from_the_batch_body():
    # {"pushes": [ {item} ]}: the item is level 3, its data level 4.
    items = [{"users": ["u"], "data": nested(61)}, {"users": ["u"], "data": nested(62)},
             {"users": ["u"], "data": 1, "topic": SURROGATE}]
    results, good = validation.batch_requests(items)
    assert [index for index, _ in good] == [0]
    assert results[1] is not None and results[1]["error"] == "invalid"
    assert results[2] is not None and "topic" in results[2]["detail"]


@pytest.mark.parametrize(("body", "field"), [
    ({"user": "u", "meta": {"name": SURROGATE}}, "meta"),
    ({"user": "u", "meta": {SURROGATE: 1}}, "meta"),
    ({"user": "u", "meta": {"n": float("inf")}}, "meta"),
    ({"user": "u", "meta": {"n": 10 ** 400}}, "meta"),
    ({"user": "u", "meta": {"n": nested(63)}}, "meta"),
    ({"user": SURROGATE}, "user"),
    ({"user": "u", "meta": {"n": "a\x00"}}, "meta"),
])
def test_token_requests_are_checked_the_same_way(body, field):
    assert list(refused(token_request, body).fields or {}) == [field]


def test_disconnect_reasons_are_checked_the_same_way():
    assert list(refused(disconnect_reason, {"reason": SURROGATE}).fields or {}) == ["reason"]


@pytest.mark.parametrize("field", ["topic", "idempotency_key"])
def test_text_columns_refuse_nul(field):
    # PostgreSQL's text columns refuse NUL: it would fail the insert, not validation.
    assert list(refused(push_request, {"users": ["u"], "data": "a\x00", field: "a\x00"})
                .fields or {}) == [field]
    assert push_request({"users": ["u"], "data": "a\x00"}).data_json == '"a\\u0000"'

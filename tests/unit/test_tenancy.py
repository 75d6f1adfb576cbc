"""Apps in a node's memory (PROTOCOL.md section 9): tokens naming their app, the per-app
registry and delivery, broker messages of an app, and the per-app limits across a cluster
(clocks injected)."""

from __future__ import annotations

import dataclasses
import json
import time

import jwt
import pytest

from gateway_core.messages import (
    APP_MESSAGE_VERSION,
    MESSAGE_VERSION,
    ControlMessage,
    PushMessage,
    decode_many,
    encode,
    encode_batch,
    same_version,
)
from gateway_core.tenancy import (
    AppDirectory,
    AppInfo,
    AppLimits,
    AppLoad,
    parse_scopes,
    valid_app_id,
)
from gateway_core.tokens import InvalidToken, UnknownApp, decode_token, encode_token
from sessions_app.registry import SessionManager
from tests.support.sessions import make_session

# Long enough that PyJWT does not warn about short HMAC keys.
D, SHOP_NEW, SHOP_OLD, BANK = (f"{name}-0123456789abcdef0123456789abcdef"
                               for name in ("d", "shop-new", "shop-old", "bank"))
SECRETS = {"default": (D,), "shop": (SHOP_NEW, SHOP_OLD), "bank": (BANK,)}


def secrets_for(app: str) -> tuple[str, ...] | None:
    return SECRETS.get(app)


def token(app: str | None, secret: str, *, sub: str = "u1", ttl: int = 60, **header) -> str:
    headers = dict(header)
    if app is not None:
        headers["kid"] = app
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl}, secret, algorithm="HS256",
                      headers=headers or None)


# --- Tokens -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("app", "secret", "expected"), [
    (None, D, "default"),
    ("default", D, "default"),
    ("shop", SHOP_NEW, "shop"),
    ("shop", SHOP_OLD, "shop"),  # the previous secret, during a rotation
    ("bank", BANK, "bank"),
])
def test_a_token_belongs_to_the_app_its_kid_names(app, secret, expected):
    assert decode_token(token(app, secret), secrets_for=secrets_for).app_id == expected


@pytest.mark.parametrize(("app", "secret"), [
    ("shop", BANK),       # another app's secret
    (None, SHOP_NEW),       # an app's secret without its kid is default's token
    ("bank", SHOP_NEW),
    ("default", SHOP_NEW),
])
def test_a_token_signed_with_another_apps_secret_is_refused(app, secret):
    with pytest.raises(InvalidToken, match="bad signature"):
        decode_token(token(app, secret), secrets_for=secrets_for)


@pytest.mark.parametrize("kid", ["nosuch", "Shop", "a" * 65, "", "x/y"])
def test_a_kid_no_known_app_has_is_refused(kid):
    with pytest.raises(InvalidToken) as refused:
        decode_token(token(kid, SHOP_NEW), secrets_for=secrets_for)
    # A well-formed unknown id may be an app made a moment ago: the node reloads once.
    assert isinstance(refused.value, UnknownApp) == (kid == "nosuch")


def test_encode_names_the_app_except_default():
    shop, _ = encode_token(user_id="u1", ttl_s=60, secret=SHOP_NEW, app_id="shop")
    plain, _ = encode_token(user_id="u1", ttl_s=60, secret=D)
    assert jwt.get_unverified_header(shop)["kid"] == "shop"
    assert "kid" not in jwt.get_unverified_header(plain)
    assert decode_token(shop, secrets_for=secrets_for).app_id == "shop"


def test_app_ids_and_scopes():
    assert valid_app_id("shop-2_b") and not valid_app_id("-shop") and not valid_app_id("Shop")
    assert parse_scopes("manage, push") == ("push", "manage")
    for bad in ("", "push,admin"):
        with pytest.raises(ValueError):
            parse_scopes(bad)


# --- Registry and delivery ------------------------------------------------------------------

def test_the_same_user_id_in_two_apps_is_two_users():
    registry = SessionManager()
    shop = make_session("u1", "s1")
    shop.app_id = "shop"
    bank = make_session("u1", "s2")
    bank.app_id = "bank"
    plain = make_session("u1", "s3")
    for session in (shop, bank, plain):
        registry.register(session, max_per_user=1)  # one each: no eviction across apps
    assert list(registry.sessions_of(["u1"], "shop")) == [shop]
    assert list(registry.sessions_of(["u1"], "bank")) == [bank]
    assert list(registry.sessions_of(["u1"])) == [plain]
    assert registry.sessions_in("shop") == [shop]
    assert registry.counts_by_app() == {"shop": (1, 1), "bank": (1, 1), "default": (1, 1)}
    assert registry.user_count == 3
    registry.unregister(shop)
    assert registry.sessions_in("shop") == [] and "shop" not in registry.counts_by_app()
    assert registry.connections_of("bank") == 1


def test_token_expiry_is_listed_for_the_sweep():
    registry = SessionManager()
    lapsing = make_session("u1", "s1")
    lapsing.expires_at = 1000.0
    lasting = make_session("u2", "s2")
    lasting.expires_at = 5000.0
    for session in (lapsing, lasting, make_session("u3", "s3")):
        registry.register(session, max_per_user=5)
    assert registry.token_expired(now=999.0) == []
    assert registry.token_expired(now=1000.0) == [lapsing]


# --- Broker messages ------------------------------------------------------------------------

def push(push_id: str, app: str = "default") -> PushMessage:
    return PushMessage(id=push_id, users=("u1",), data_json="1", topic=None,
                       accepted_ms=1, app=app)


def test_default_messages_are_unchanged_and_other_apps_are_version_2():
    plain = json.loads(encode(push("p1")))
    assert plain["v"] == MESSAGE_VERSION and "app" not in plain
    shop = json.loads(encode(push("p2", "shop")))
    assert (shop["v"], shop["app"]) == (APP_MESSAGE_VERSION, "shop")
    order = ControlMessage(id="c1", action="disconnect", users=("u1",), session_ids=(),
                           reason="", issued_ms=1, app="bank")
    assert decode_many(encode(order)) == [order]
    assert json.loads(encode_batch([push("p1"), push("p3")]))["v"] == MESSAGE_VERSION
    batch = [push("p4", "shop"), push("p5", "shop")]
    assert json.loads(encode_batch(batch))["v"] == APP_MESSAGE_VERSION
    assert decode_many(encode_batch(batch)) == batch
    assert same_version(push("a"), push("b")) and same_version(push("a", "x"), push("b", "y"))
    assert not same_version(push("a"), push("b", "shop"))


def test_a_node_of_the_release_before_apps_skips_other_apps_messages():
    """What a v1 node checks (``v == 1``) refuses every message of another app."""
    for raw in (encode(push("p2", "shop")), encode_batch([push("p3", "shop")])):
        assert json.loads(raw)["v"] != 1
    assert json.loads(encode(dataclasses.replace(push("p4"))))["v"] == 1


# --- Limits across a cluster ----------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limits(**apps: AppInfo) -> tuple[AppLimits, Clock]:
    clock = Clock()
    directory = AppDirectory(apps.values())
    found = AppLimits(directory)
    found.clock = clock
    found._since = clock.now
    return found, clock


def test_connections_count_this_node_and_the_others_last_beat():
    found, _ = limits(shop=AppInfo("shop", ("s",), max_connections=10))
    assert found.connection_allowed("shop", 9)
    assert not found.connection_allowed("shop", 10)
    found.others = {"shop": AppLoad(connections=7)}
    assert found.connection_allowed("shop", 2) and not found.connection_allowed("shop", 3)
    assert found.connection_allowed("bank", 10_000)  # unknown or unlimited: no limit


def test_pushes_spend_the_rate_less_the_others_and_report_their_own():
    found, clock = limits(shop=AppInfo("shop", ("s",), pushes_per_second=10))
    allowed = sum(found.take_pushes("shop") is None for _ in range(20))
    assert allowed == 10
    wait = found.take_pushes("shop")
    assert wait is not None and 0 < wait <= 0.1
    clock.now += 1.0
    assert found.beat() == {"shop": 10.0}  # what it accepted in that second
    found.others = {"shop": AppLoad(pushes_per_s=6.0)}
    clock.now += 1.0
    assert sum(found.take_pushes("shop") is None for _ in range(20)) == 4
    # Stale figures never refuse everything: at least one a second.
    found.others = {"shop": AppLoad(pushes_per_s=50.0)}
    clock.now += 1.0
    assert found.take_pushes("shop") is None


def test_a_batch_bigger_than_a_seconds_budget_passes_once_the_bucket_is_full():
    found, clock = limits(shop=AppInfo("shop", ("s",), pushes_per_second=5))
    assert found.take_pushes("shop", 50) is None
    assert found.take_pushes("shop", 1) is not None
    clock.now += 5.0
    assert found.take_pushes("shop", 1) is not None  # still paying for the big batch
    clock.now += 6.0
    assert found.take_pushes("shop", 1) is None


def test_a_miss_reloads_at_most_once_a_second():
    directory = AppDirectory()
    clock = Clock()
    directory.clock = clock
    assert directory.may_reload_on_miss()
    assert not directory.may_reload_on_miss()
    clock.now += 1.0
    assert directory.may_reload_on_miss()

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from push_app.models import ApiClient
from push_app.services import api_client_for_key


@pytest.mark.django_db
def test_createapikey_prints_exactly_the_key():
    out, err = StringIO(), StringIO()
    call_command("createapikey", "billing", stdout=out, stderr=err)
    printed = out.getvalue()
    key = printed.strip()
    assert printed == key + "\n"
    # Which database the key went to, on stderr only (issue #17).
    assert err.getvalue().startswith("database ")
    assert key not in err.getvalue()
    client = api_client_for_key(key)
    assert client is not None
    assert client.name == "billing"
    assert client.is_active
    # Stored hashed: the key itself is nowhere in the row.
    row = ApiClient.objects.get(name="billing")
    assert key not in (row.key_hash, row.key_prefix)


@pytest.mark.django_db
def test_createapikey_refuses_duplicates():
    call_command("createapikey", "billing", stdout=StringIO())
    out = StringIO()
    with pytest.raises(CommandError, match="billing"):
        call_command("createapikey", "billing", stdout=out)
    assert out.getvalue() == ""
    assert ApiClient.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["   ", "x" * 101])
def test_createapikey_refuses_bad_names(name):
    with pytest.raises(CommandError, match="1-100"):
        call_command("createapikey", name, stdout=StringIO())
    assert ApiClient.objects.count() == 0


def test_runconsumer_refuses_the_local_broker():
    with override_settings(GATEWAY_BROKER="local", REDIS_URL="redis://127.0.0.1:6379/0"), \
            pytest.raises(CommandError, match="GATEWAY_BROKER=local"):
        call_command("runconsumer")


@pytest.mark.parametrize("broker", ["rocketmq", "redis"])
def test_runconsumer_needs_redis_url(broker):
    with override_settings(GATEWAY_BROKER=broker, REDIS_URL=""), \
            pytest.raises(CommandError, match="REDIS_URL"):
        call_command("runconsumer")


def test_rungateway_workers_refuse_the_local_broker():
    with override_settings(GATEWAY_BROKER="local"), \
            pytest.raises(CommandError, match="GATEWAY_BROKER=local") as raised:
        call_command("rungateway", "--workers", "2", "--no-migrate")
    assert "GATEWAY_BROKER=redis" in str(raised.value)


def test_rungateway_workers_must_be_positive():
    with pytest.raises(CommandError, match="at least 1"):
        call_command("rungateway", "--workers", "0", "--no-migrate")


def test_the_banner_names_database_and_broker_never_a_password():
    from gateway_core import banner

    database = {"ENGINE": "django.db.backends.postgresql", "NAME": "gw", "USER": "ops",
                "PASSWORD": "s3cret", "HOST": "db.internal", "PORT": 5432}
    assert banner.describe_database(database) == "postgresql ops@db.internal:5432/gw"
    with override_settings(GATEWAY_BROKER="redis", REDIS_URL="redis://:s3cret@cache:6379/0"):
        line = banner.banner()
    assert "; broker redis redis://cache:6379/0; channel layer redis redis://cache:6379/0" in line
    assert "s3cret" not in line


class FakeRedis:
    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.closed = False

    async def set(self, key: str, value: str, *, ex: int) -> None:
        self.keys[key] = ex

    async def delete(self, key: str) -> None:
        self.keys.pop(key, None)

    async def aclose(self) -> None:
        self.closed = True


async def test_runconsumer_beats_while_consuming_and_stops_beating_when_stopped(monkeypatch):
    import asyncio

    from gateway_core.brokers.local import LocalBroker
    from gateway_node import broker_process

    fake = FakeRedis()
    monkeypatch.setattr(broker_process, "_redis", lambda url: fake)
    monkeypatch.setattr(broker_process, "BEAT_INTERVAL_S", 0.01)
    broker = LocalBroker(node_id="d")
    beat = asyncio.create_task(broker_process.keep_beat(broker, node_id="d", redis_url="r"))
    await asyncio.sleep(0.05)
    assert fake.keys == {}  # not consuming yet: no beat
    broker.consuming = True
    await asyncio.sleep(0.05)
    assert fake.keys == {"gateway:d:consumer-beat": broker_process.BEAT_TTL_S}
    beat.cancel()
    await asyncio.gather(beat, return_exceptions=True)
    assert fake.keys == {} and fake.closed

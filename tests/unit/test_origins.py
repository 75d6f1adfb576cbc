"""The /ws/ origin allow-list (``GATEWAY_ALLOWED_ORIGINS``): parsing, normalising and the
decision per handshake; the real handshake under both servers is in
tests/e2e/test_handshake_security.py."""

from __future__ import annotations

import pytest
from django.test import override_settings

from gateway_core.env import ConfigError
from gateway_node import origins


def _headers(origin: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"gw.example.com"), (b"upgrade", b"websocket")]
    if origin is not None:
        headers.append((b"origin", origin.encode("latin-1")))
    return headers


@pytest.mark.parametrize(("given", "normal"), [
    ("https://App.Example.com", "https://app.example.com"),
    ("https://app.example.com:443", "https://app.example.com"),
    ("http://app.example.com:80/", "http://app.example.com"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("null", "null"),
])
def test_normalize(given: str, normal: str) -> None:
    assert origins.normalize(given) == normal


@pytest.mark.parametrize("bad", ["app.example.com", "https://", "https://a.com/path",
                                 "https://user@a.com", "https://a.com:99999"])
def test_not_an_origin(bad: str) -> None:
    with pytest.raises(ValueError):
        origins.normalize(bad)


def test_a_bad_setting_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_ALLOWED_ORIGINS"):
        origins.parse("https://ok.example.com, app.example.com")


def test_parsed_once_per_value() -> None:
    origins.parse.cache_clear()
    raw = "https://a.example.com,https://b.example.com"
    for _ in range(3):
        origins.parse(raw)
    assert origins.parse.cache_info().misses == 1


def test_unset_allows_any_origin() -> None:
    with override_settings(GATEWAY_ALLOWED_ORIGINS=""):
        assert origins.allowed(_headers("https://evil.example.net"))


@override_settings(GATEWAY_ALLOWED_ORIGINS="https://app.example.com, http://localhost:3000")
def test_set_allows_only_the_listed_origins() -> None:
    assert origins.allowed(_headers("https://app.example.com"))
    assert origins.allowed(_headers("https://APP.example.com:443"))
    assert origins.allowed(_headers("http://localhost:3000"))
    assert origins.allowed(_headers(None))  # not a browser
    assert not origins.allowed(_headers("https://evil.example.net"))
    assert not origins.allowed(_headers("http://app.example.com"))
    assert not origins.allowed(_headers("https://app.example.com.evil.net"))
    assert not origins.allowed(_headers("http://localhost:3001"))
    assert not origins.allowed(_headers("null"))
    assert not origins.allowed(_headers("not an origin"))
    assert not origins.allowed(_headers("https://app.example.com\xff"))

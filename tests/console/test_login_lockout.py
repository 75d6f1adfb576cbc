"""Admin login brute force (issue #10): after a few wrong passwords from one address for one
username, even the right password is refused, with a clear message, until the cool-off
passes; other addresses and other usernames are not affected.

Time is moved by ageing the stored attempts (what the lockout reads), never by sleeping.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "right-password-123"


def _login(client: Client, username: str, password: str, ip: str) -> int:
    response = client.post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=ip,
    )
    return response.status_code


@pytest.fixture
def staff(db: object) -> User:
    return User.objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)


def _logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_right_password_refused_after_repeated_failures(staff: User) -> None:
    attacker = Client()
    for _ in range(20):
        _login(attacker, "ops", "wrong", "203.0.113.9")
    status = _login(attacker, "ops", PASSWORD, "203.0.113.9")
    assert not _logged_in(attacker)
    assert status == 429
    response = attacker.post(LOGIN, {"username": "ops", "password": PASSWORD},
                             REMOTE_ADDR="203.0.113.9")
    assert b"too many failed login attempts" in response.content.lower()


def test_lockout_is_per_username_and_address(staff: User) -> None:
    User.objects.create_user("other", password=PASSWORD, is_staff=True)
    attacker = Client()
    for _ in range(10):
        _login(attacker, "ops", "wrong", "203.0.113.9")
    # The same user from another address, and another user from the same address, still
    # log in: a lockout per address alone would let anyone lock operators out.
    from_office = Client()
    _login(from_office, "ops", PASSWORD, "198.51.100.7")
    assert _logged_in(from_office)
    same_address = Client()
    _login(same_address, "other", PASSWORD, "203.0.113.9")
    assert _logged_in(same_address)


def test_failures_below_the_limit_do_not_lock(staff: User) -> None:
    client = Client()
    with override_settings(AXES_FAILURE_LIMIT=3):
        for _ in range(2):
            _login(client, "ops", "wrong", "203.0.113.9")
        _login(client, "ops", PASSWORD, "203.0.113.9")
    assert _logged_in(client)


def test_lockout_ends_after_the_cool_off(staff: User) -> None:
    from axes.models import AccessAttempt

    client = Client()
    with override_settings(AXES_FAILURE_LIMIT=3, AXES_COOLOFF_TIME=timedelta(minutes=15)):
        for _ in range(3):
            _login(client, "ops", "wrong", "203.0.113.9")
        assert _login(client, "ops", PASSWORD, "203.0.113.9") == 429
        # Sixteen minutes later (the attempts aged, instead of sleeping):
        AccessAttempt.objects.update(
            attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16)
        )
        _login(client, "ops", PASSWORD, "203.0.113.9")
    assert _logged_in(client)


def test_limits_come_from_the_environment_settings(settings: object) -> None:
    from django.conf import settings as django_settings

    assert django_settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]
    assert django_settings.AXES_FAILURE_LIMIT == 5
    assert timedelta(minutes=15) == django_settings.AXES_COOLOFF_TIME


def test_an_operator_sees_and_lifts_a_lockout(staff: User, admin_client: Client) -> None:
    attacker = Client()
    for _ in range(6):
        _login(attacker, "ops", "wrong", "203.0.113.9")
    page = admin_client.get("/admin/axes/accessattempt/")
    assert page.status_code == 200
    assert b"203.0.113.9" in page.content
    from axes.models import AccessAttempt

    attempt = AccessAttempt.objects.get(username="ops")
    admin_client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    _login(attacker, "ops", PASSWORD, "203.0.113.9")
    assert _logged_in(attacker)

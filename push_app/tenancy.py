"""Apps (PROTOCOL.md section 9): creating them, their client-token secrets and rotation,
and what a node loads of them (``gateway_core.tenancy.AppDirectory``).

A rotation keeps two secrets: ``rotate`` makes a new current secret and keeps the old one
as ``previous``, so tokens signed with either are accepted; ``drop_previous`` ends that,
and tokens signed with the old one get 4001 from then on (a connection holding one is
closed with 4011 when its ``exp`` passes, as any connection is). Nodes see a change at
their next beat (``GATEWAY_RECORD_INTERVAL``, 5 s by default), when they reload the apps.
"""

from __future__ import annotations

import secrets

from django.db import transaction
from django.utils import timezone

from gateway_core.conf import gateway_settings
from gateway_core.tenancy import DEFAULT_APP, AppInfo, valid_app_id
from push_app.models import App


class AppInvalid(ValueError):
    """An app id or name that cannot be used, in words an operator reads."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def app_create(*, app_id: str, name: str = "", max_connections: int | None = None,
               pushes_per_second: int | None = None) -> tuple[App, str]:
    """A new app and its client-token secret (shown once by the caller)."""
    if not valid_app_id(app_id):
        raise AppInvalid("an app id is 1-64 of a-z 0-9 _ - and starts with a letter or digit")
    if App.objects.filter(pk=app_id).exists():
        raise AppInvalid(f"app {app_id!r} exists")
    secret = new_secret()
    app = App.objects.create(id=app_id, name=name or app_id, secret=secret,
                             max_connections=max_connections,
                             pushes_per_second=pushes_per_second)
    return app, secret


def _editable(app: App) -> None:
    if app.pk == DEFAULT_APP:
        raise AppInvalid("the app default signs with GATEWAY_JWT_SECRET: rotate that in the "
                         "environment of every node")


def app_rotate(*, app: App) -> str:
    """A new current secret; the current one becomes ``previous`` (still accepted)."""
    _editable(app)
    secret = new_secret()
    with transaction.atomic():
        App.objects.filter(pk=app.pk).update(previous_secret=app.secret, secret=secret,
                                             secret_rotated_at=timezone.now())
    app.previous_secret, app.secret = app.secret, secret
    return secret


def app_drop_previous(*, app: App) -> bool:
    """Stop accepting the previous secret; False if there was none."""
    _editable(app)
    if not app.previous_secret:
        return False
    App.objects.filter(pk=app.pk).update(previous_secret="")
    app.previous_secret = ""
    return True


def app_get(app_id: str) -> App:
    """The app of this id (``App.DoesNotExist`` if none). ``default`` always exists: its
    row is made here if a flushed or hand-made database lacks it."""
    if app_id == DEFAULT_APP:
        return App.objects.get_or_create(pk=DEFAULT_APP, defaults={"name": DEFAULT_APP})[0]
    return App.objects.get(pk=app_id)


def app_signing_secret(app_id: str) -> str:
    """The secret new tokens of ``app_id`` are signed with (``App.DoesNotExist`` if none)."""
    if app_id == DEFAULT_APP:
        return gateway_settings.jwt_secret
    return App.objects.values_list("secret", flat=True).get(pk=app_id)


def app_infos() -> list[AppInfo]:
    """Every app as a node holds it (one query). ``default`` is there even before its row
    exists, as a v1 database has none until it is migrated."""
    infos = {DEFAULT_APP: AppInfo(id=DEFAULT_APP, secrets=(gateway_settings.jwt_secret,))}
    for app in App.objects.all():
        secrets_ = ((gateway_settings.jwt_secret,) if app.pk == DEFAULT_APP
                    else tuple(s for s in (app.secret, app.previous_secret) if s))
        infos[app.pk] = AppInfo(id=app.pk, secrets=secrets_,
                                max_connections=app.max_connections,
                                pushes_per_second=app.pushes_per_second)
    return list(infos.values())

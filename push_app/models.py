"""Apps, API clients and the push log."""

from __future__ import annotations

from django.db import models

from gateway_core.tenancy import ALL_SCOPES, DEFAULT_APP


class App(models.Model):
    """One business system's space (PROTOCOL.md section 9): its users, client-token
    secrets, API keys and limits. ``default`` exists from the migration that made apps;
    its client-token secret is ``GATEWAY_JWT_SECRET``, so the columns stay empty for it.

    Secrets are stored as they are, not hashed: a node needs the secret itself to check a
    token's signature, as it needs ``GATEWAY_JWT_SECRET`` (docs/security.md).
    """

    id = models.CharField(primary_key=True, max_length=64, verbose_name="app id")
    name = models.CharField(max_length=100, blank=True)
    secret = models.CharField(max_length=128, blank=True, editable=False)
    previous_secret = models.CharField(max_length=128, blank=True, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    max_connections = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Open connections across the cluster; past it a new one is closed with "
                  "4003. Empty: no limit.")
    pushes_per_second = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Pushes per second across the cluster; past it the API answers 429. "
                  "Empty: no limit.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "app"

    def __str__(self) -> str:
        return self.id


class ApiClient(models.Model):
    """A business system's key to the REST API, in one app, with scopes. Stored hashed."""

    name = models.CharField(max_length=100, unique=True)
    # ``db_default``: a node of the release before apps, writing during a rolling upgrade,
    # makes clients of ``default`` with every scope, as it always did.
    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="api_clients",
                            default=DEFAULT_APP, db_default=DEFAULT_APP)
    scopes = models.CharField(max_length=64, default=ALL_SCOPES, db_default=ALL_SCOPES,
                              help_text="Comma-separated: push, presence, manage.")
    key_prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    # DRF's permission classes ask the authenticated principal this.
    is_authenticated = True

    class Meta:
        ordering = ["name"]
        verbose_name = "API client"

    def __str__(self) -> str:
        return self.name

    @property
    def scope_list(self) -> tuple[str, ...]:
        return tuple(part for part in self.scopes.split(",") if part)


class PushStatus(models.TextChoices):
    ACCEPTED = "accepted"
    PUBLISHED = "published"
    DELIVERED = "delivered"
    FAILED = "failed"


class PushLog(models.Model):
    """One accepted push: stored before it is published, so none is lost."""

    id = models.CharField(primary_key=True, max_length=32)
    client = models.ForeignKey(
        ApiClient, null=True, blank=True, on_delete=models.SET_NULL, related_name="pushes"
    )
    # The app id, not a foreign key: a push outlives an app deleted after it.
    app = models.CharField(max_length=64, default=DEFAULT_APP, db_default=DEFAULT_APP,
                           db_index=True)
    status = models.CharField(
        max_length=16, choices=PushStatus.choices, default=PushStatus.ACCEPTED
    )
    broadcast = models.BooleanField(default=False)
    users = models.JSONField(default=list, blank=True)
    target_count = models.PositiveIntegerField(default=0)
    topic = models.CharField(max_length=200, null=True, blank=True)
    data_json = models.TextField()
    payload_bytes = models.PositiveIntegerField(default=0)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    ttl_s = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    accepted_node = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(db_index=True)
    published_at = models.DateTimeField(null=True, blank=True)
    delivered = models.PositiveIntegerField(default=0)
    acked = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "push log"
        constraints = [
            models.UniqueConstraint(
                fields=["client", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="push_idempotency_key_per_client",
            )
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            # A resume's kept broadcasts after ``since`` (push_app.recipients.inbox): without
            # it the read walks every push of the app (the ``app`` index) and sorts them.
            models.Index(fields=["app", "id"], name="pushlog_kept_broadcasts",
                         condition=models.Q(broadcast=True, expires_at__isnull=False)),
        ]
        permissions = [("send_test_push", "Can send a test push from the console")]

    def __str__(self) -> str:
        return self.id


class RecipientState(models.TextChoices):
    """What became of a targeted push for one of its users (PROTOCOL.md section 6)."""

    OFFLINE = "offline"  # ttl 0, and no session of the user held it
    PENDING = "pending"  # kept, not yet written to a socket of the user
    DELIVERED = "delivered"  # written to at least one socket of the user, not acked
    ACKED = "acked"  # a session of the user acked it
    EXPIRED = "expired"  # the ttl ran out before an ack
    DROPPED = "dropped"  # pushed out by GATEWAY_MAX_PENDING_PER_USER


#: States in which a kept push still waits for its user (the user's inbox).
WAITING = (RecipientState.PENDING, RecipientState.DELIVERED)


class PushRecipient(models.Model):
    """One target user of a targeted push: its state, times and attempts.

    Written with the push (before the API answers 202), so a kept push (``ttl`` > 0) is in
    its users' inboxes from then on; updated in batches by the nodes that deliver it and
    receive its acks (``push_app.recipients``). ``app`` and ``expires_at`` repeat the push's,
    so that a user's inbox is one index range.
    """

    push = models.ForeignKey(PushLog, on_delete=models.CASCADE, related_name="recipients",
                             db_index=False)
    app = models.CharField(max_length=64)
    user_id = models.CharField(max_length=128, verbose_name="user")
    state = models.CharField(max_length=16, choices=RecipientState.choices)
    kept = models.BooleanField(default=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "push recipient"
        constraints = [
            models.UniqueConstraint(fields=["push", "user_id"], name="push_recipient_per_user"),
        ]
        indexes = [
            # A user's inbox: kept pushes still waiting, in accept order (push ids sort so).
            models.Index(fields=["app", "user_id", "push"], name="recipient_inbox",
                         condition=models.Q(kept=True, state__in=["pending", "delivered"])),
            # The expiry sweep.
            models.Index(fields=["expires_at"], name="recipient_waiting_expiry",
                         condition=models.Q(state__in=["pending", "delivered"])),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} of {self.push_id}"


class PushDelivery(models.Model):
    """What one node delivered of one push: the per-node counts behind PushLog's totals."""

    push = models.ForeignKey(PushLog, on_delete=models.CASCADE, related_name="deliveries")
    node_id = models.CharField(max_length=128)
    delivered = models.PositiveIntegerField(default=0)
    acked = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["push", "node_id"], name="push_delivery_per_node")
        ]


class AuditActor(models.TextChoices):
    OPERATOR = "operator"
    API_CLIENT = "api_client", "API client"


class AuditAction(models.TextChoices):
    USER_DISCONNECT = "user_disconnect", "disconnect user"
    SESSIONS_DISCONNECT = "sessions_disconnect", "disconnect sessions"
    TEST_PUSH = "test_push", "test push"
    KEY_CREATE = "key_create", "API key created"
    KEY_ROTATE = "key_rotate", "API key rotated"
    KEY_DEACTIVATE = "key_deactivate", "API client deactivated"
    KEY_ACTIVATE = "key_activate", "API client activated"
    APP_CREATE = "app_create", "app created"
    APP_ROTATE = "app_rotate", "app secret rotated"
    APP_DROP_PREVIOUS = "app_drop_previous", "app previous secret dropped"


#: The actions that order a disconnect (the user page shows one as pending).
DISCONNECT_ACTIONS = (AuditAction.USER_DISCONNECT, AuditAction.SESSIONS_DISCONNECT)


class AuditEvent(models.Model):
    """One action of an operator or an API client that changed something for a user or a
    client: who, when, what, on whom, why. Written in the sync request path (the DRF view or
    the admin action), never by the WebSocket side.

    Kept here, beneath the console, because the REST API (this app) writes it as well as the
    console; the console records its session disconnects through ``push_app.services``.
    ``actor`` is a name (username or client name), so the record outlives its author.
    """

    at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16, choices=AuditActor.choices)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    user_id = models.CharField(max_length=128, blank=True, verbose_name="user")
    #: What the action named besides the user: session ids (space-separated), a push id,
    #: an API client's name.
    target = models.TextField(blank=True)
    order_id = models.CharField(max_length=32, blank=True)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit event"
        indexes = [models.Index(fields=["user_id", "-at"], name="audit_user_at"),
                   models.Index(fields=["actor", "-at"], name="audit_actor_at")]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor}"

    @property
    def session_ids(self) -> list[str]:
        return self.target.split() if self.action == AuditAction.SESSIONS_DISCONNECT else []

class ApiRejections(models.Model):
    """Requests the REST API refused (4xx), counted by one node for one client in one
    minute: written by the node's housekeeping from ``push_app.rejections.RejectionCounter``.

    ``client`` is null for requests no client could be found for (a 401 for a missing or
    unknown key): the "unauthenticated" line."""

    client = models.ForeignKey(
        ApiClient, null=True, blank=True, on_delete=models.CASCADE, related_name="rejections"
    )
    node_id = models.CharField(max_length=128)
    minute = models.DateTimeField(db_index=True)
    total = models.PositiveIntegerField(default=0)
    s400 = models.PositiveIntegerField("400", default=0)
    s401 = models.PositiveIntegerField("401", default=0)
    s403 = models.PositiveIntegerField("403", default=0)
    s404 = models.PositiveIntegerField("404", default=0)
    s413 = models.PositiveIntegerField("413", default=0)
    s429 = models.PositiveIntegerField("429", default=0)
    other = models.PositiveIntegerField(default=0)
    last_status = models.PositiveSmallIntegerField(default=0)
    last_code = models.CharField(max_length=64, blank=True)
    last_detail = models.CharField(max_length=200, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API rejections"
        verbose_name_plural = "API rejections"
        constraints = [
            models.UniqueConstraint(fields=["client", "node_id", "minute"],
                                    name="api_rejections_per_client_node_minute")
        ]

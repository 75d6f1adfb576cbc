"""Webhook endpoints, the outbox of events, their deliveries, and presence transitions.

Every event is written (``Event`` and one ``Delivery`` per endpoint) before any call is
made, so a node that dies loses none. A delivery is sent by the node holding its lease
(``lease_token``/``lease_until``, taken with a conditional UPDATE): with several nodes on one
database, one delivery is in flight on one node at a time, and a dead node's lease runs out
so that another node takes it over.
"""

from __future__ import annotations

from django.db import models

from push_app.models import ApiClient

PUSH_SETTLED = "push.settled"
USER_ONLINE = "user.online"
USER_OFFLINE = "user.offline"
EVENT_TYPES = (PUSH_SETTLED, USER_ONLINE, USER_OFFLINE)
PRESENCE_EVENTS = (USER_ONLINE, USER_OFFLINE)


class Endpoint(models.Model):
    """A URL an API client registered, the events it wants, and its signing secret."""

    id = models.CharField(primary_key=True, max_length=32)
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="webhooks",
                               verbose_name="API client")
    # The client's app when it was made (a client never changes app): presence events are
    # per app, and the admin filters by it without a join.
    app = models.CharField(max_length=64, db_index=True)
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    # Kept as it is, not hashed: every call is signed with it (as Stripe and GitHub do).
    secret = models.CharField(max_length=100, editable=False)
    created_at = models.DateTimeField()
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    #: Set at a failure while unset, cleared at a success: "failing for 5 minutes".
    failing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.url


class Event(models.Model):
    """One thing that happened, as sent: ``{"id", "type", "created", "data"}``."""

    id = models.CharField(primary_key=True, max_length=32)
    app = models.CharField(max_length=64, db_index=True)
    type = models.CharField(max_length=32)
    created_at = models.DateTimeField(db_index=True)
    #: The body sent, encoded once when the event was made: every endpoint and every retry
    #: gets the same bytes.
    body = models.TextField()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "webhook event"

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Delivery(models.Model):
    """One event for one endpoint: its attempts and their outcome."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    app = models.CharField(max_length=64, db_index=True)
    state = models.CharField(max_length=16, choices=DeliveryState.choices,
                             default=DeliveryState.PENDING)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True,
                                                   help_text="0: no HTTP answer")
    last_response = models.CharField(max_length=500, blank=True,
                                     help_text="the start of the last answer, or the error")
    delivered_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.CharField(max_length=32, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_node = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="webhook_due")]

    def __str__(self) -> str:
        return f"{self.event_id} to {self.endpoint_id}"


class PresenceState(models.Model):
    """What the cluster last told endpoints about one user of one app: online or not.

    Each transition is claimed with a conditional UPDATE (or the unique insert) in the same
    transaction that writes its event, so two nodes that both see it emit it once."""

    app = models.CharField(max_length=64)
    user_id = models.CharField(max_length=128)
    online = models.BooleanField(default=False)
    changed_at = models.DateTimeField()
    #: When a scan first found the user with no live session (the debounce starts there).
    absent_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "user_id"],
                                               name="webhook_presence_per_user")]
        indexes = [models.Index(fields=["app", "online"], name="webhook_presence_online")]


class SettledPush(models.Model):
    """A push whose ``push.settled`` event is stored: the claim that makes it one event
    however many nodes see it settle (its primary key is the push id; a second insert
    fails)."""

    push_id = models.CharField(primary_key=True, max_length=32)
    settled_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "settled push"

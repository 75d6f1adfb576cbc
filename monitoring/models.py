"""Alerts raised by ``manage.py runalerts``, and the notifications sent about them.

An ``Alert`` is one episode of one rule about one subject (a node id, or ``""`` for the
whole cluster): opened when the rule fires, closed (``resolved_at``) when it stops. At
most one episode per rule and subject is open at a time (a database constraint), so
several ``runalerts`` processes never raise the same alert twice.
"""

from __future__ import annotations

from django.db import models


class Severity(models.TextChoices):
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(models.Model):
    rule = models.CharField(max_length=64, db_index=True)
    subject = models.CharField(max_length=128, blank=True, help_text="node id; empty: cluster")
    severity = models.CharField(max_length=16, choices=Severity.choices)
    summary = models.TextField()
    value = models.FloatField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    fired_at = models.DateTimeField(db_index=True)
    last_seen_at = models.DateTimeField(help_text="last evaluation that found it firing")
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-fired_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=models.Q(resolved_at__isnull=True),
                name="one_open_alert_per_rule_and_subject",
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule} {self.subject}".strip()

    @property
    def firing(self) -> bool:
        return self.resolved_at is None


class NotificationKind(models.TextChoices):
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertNotification(models.Model):
    """One notice (firing or resolved) of one alert through one channel, with its retries."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    channel = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    #: A sender claims a notice until then, so that two runalerts never both send it.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "kind", "channel"], name="one_notice_per_alert_kind_channel"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} via {self.channel}"

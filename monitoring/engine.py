"""The alert engine: evaluate the rules, keep one ``Alert`` per firing episode, notify once.

One round (``run_once``):
1. each rule is evaluated at ``now``; a finding without an open alert opens one and queues
   a ``firing`` notice per channel; an open alert whose subject no longer fires is resolved
   and queues a ``resolved`` notice. An alert that stays firing is only touched
   (``last_seen_at``, value), never notified again. A rule that fails to evaluate (a
   database error) leaves its alerts as they are.
2. queued notices are sent; a channel that fails is retried on later rounds, up to
   ``max_attempts``.

Several ``runalerts`` (one per node, say) may run at once: the database constraint on open
alerts and the claim on each notice keep every notice to one sender.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from monitoring.conf import AlertSettings, alert_settings
from monitoring.models import Alert, AlertNotification, NotificationKind
from monitoring.notifiers import BaseNotifier, configured_notifiers
from monitoring.rules import RULES, BaseRule, Finding

logger = logging.getLogger("gateway.alerts")


@dataclass
class RoundReport:
    fired: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    firing: int = 0
    sent: int = 0
    failed: int = 0
    rule_errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def names(alerts: list[Alert]) -> str:
            return ", ".join(str(a) for a in alerts) or "none"

        text = (f"firing {self.firing}; new: {names(self.fired)}; resolved: "
                f"{names(self.resolved)}; notices sent {self.sent}, failed {self.failed}")
        if self.rule_errors:
            text += f"; rules that failed: {', '.join(self.rule_errors)}"
        return text


class AlertEngine:
    clock: Callable[[], datetime] = staticmethod(timezone.now)
    max_attempts = 10
    claim_s = 60

    def __init__(
        self, *, rules: Sequence[BaseRule] = RULES,
        notifiers: Sequence[BaseNotifier] | None = None, cfg: AlertSettings = alert_settings,
    ) -> None:
        self.rules = list(rules)
        self.notifiers = list(configured_notifiers() if notifiers is None else notifiers)
        self.cfg = cfg

    def run_once(self, now: datetime | None = None) -> RoundReport:
        now = now or self.clock()
        report = RoundReport()
        for rule in self.rules:
            try:
                findings = rule.evaluate(now=now, cfg=self.cfg)
            except Exception:
                logger.exception("alert rule %s could not be evaluated", rule.name)
                report.rule_errors.append(rule.name)
                continue
            self._apply(rule, findings, now, report)
        report.firing = Alert.objects.filter(resolved_at__isnull=True).count()
        self._send_pending(now, report)
        return report

    # --- state ----------------------------------------------------------------------
    def _apply(self, rule: BaseRule, findings: list[Finding], now: datetime,
               report: RoundReport) -> None:
        open_alerts = {
            a.subject: a for a in Alert.objects.filter(rule=rule.name, resolved_at__isnull=True)
        }
        current = {f.subject: f for f in findings}
        for subject, finding in current.items():
            alert = open_alerts.get(subject)
            if alert is not None:
                Alert.objects.filter(pk=alert.pk).update(
                    last_seen_at=now, value=finding.value, details=finding.details,
                    summary=finding.summary,
                )
                continue
            alert = self._open(rule, finding, now)
            if alert is not None:
                report.fired.append(alert)
                logger.warning("alert %s firing: %s", rule.name, finding.summary,
                               extra={"alert": rule.name, "subject": subject})
        for subject, alert in open_alerts.items():
            if subject in current:
                continue
            with transaction.atomic():
                closed = Alert.objects.filter(pk=alert.pk, resolved_at__isnull=True).update(
                    resolved_at=now
                )
                if closed:
                    self._queue(alert, NotificationKind.RESOLVED, now)
            if closed:
                alert.resolved_at = now
                report.resolved.append(alert)
                logger.info("alert %s resolved: %s", rule.name, alert.summary,
                            extra={"alert": rule.name, "subject": subject})

    def _open(self, rule: BaseRule, finding: Finding, now: datetime) -> Alert | None:
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    rule=rule.name, subject=finding.subject, severity=rule.severity,
                    summary=finding.summary, value=finding.value, details=finding.details,
                    fired_at=now, last_seen_at=now,
                )
                self._queue(alert, NotificationKind.FIRING, now)
        except IntegrityError:
            return None  # another runalerts opened it first and notifies for it
        return alert

    def _queue(self, alert: Alert, kind: str, now: datetime) -> None:
        AlertNotification.objects.bulk_create([
            AlertNotification(alert=alert, kind=kind, channel=n.name, created_at=now)
            for n in self.notifiers
        ], ignore_conflicts=True)

    # --- notices --------------------------------------------------------------------
    def _send_pending(self, now: datetime, report: RoundReport) -> None:
        by_name = {n.name: n for n in self.notifiers}
        pending = AlertNotification.objects.filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
            sent_at__isnull=True, attempts__lt=self.max_attempts, channel__in=list(by_name),
        ).select_related("alert")
        for notice in pending:
            claimed = AlertNotification.objects.filter(
                Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
                pk=notice.pk, sent_at__isnull=True,
            ).update(claimed_until=now + timedelta(seconds=self.claim_s))
            if not claimed:
                continue
            try:
                by_name[notice.channel].send(notice.alert, kind=notice.kind)
            except Exception as exc:
                notice.attempts += 1
                notice.error = f"{exc.__class__.__name__}: {exc}"[:1000]
                notice.claimed_until = None
                notice.save(update_fields=["attempts", "error", "claimed_until"])
                report.failed += 1
                logger.warning("alert notice %s %s via %s failed (attempt %d): %s",
                               notice.alert.rule, notice.kind, notice.channel, notice.attempts,
                               notice.error)
                continue
            notice.attempts += 1
            notice.sent_at = now
            notice.error = ""
            notice.save(update_fields=["attempts", "sent_at", "error"])
            report.sent += 1

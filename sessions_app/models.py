"""Nodes and sessions as the database (and so admin and other nodes) see them.

The live truth is each node's in-memory registry; these rows are written in batches by
``sessions_app.recorder`` so that any node can answer presence for users on any node, and
so that a node that died has its sessions expired by the others.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone


class Node(models.Model):
    id = models.CharField(primary_key=True, max_length=128)
    address = models.CharField(max_length=255, blank=True)
    broker = models.CharField(max_length=32, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    connections = models.PositiveIntegerField(default=0)
    users = models.PositiveIntegerField(default=0)
    #: Per app at the last beat: ``{app: {"connections": n, "users": n, "pushes_per_s": r}}``,
    #: which other nodes read to hold each app's limits across the cluster.
    apps = models.JSONField(default=dict, blank=True, null=True)
    #: Routed delivery at the last beat (docs/cluster.md, "Routing"): ``mode``, pushes
    #: ``read`` and ``not_held`` since start, ``routed`` per destination node, ``unheld``,
    #: ``fallback``, ``map_connections``, ``lookup_ms`` (mean); empty without ``REDIS_URL``.
    routing = models.JSONField(default=dict, blank=True, null=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id

    def is_alive(self, *, timeout_s: int, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.stopped_at is None and self.last_seen >= now - timedelta(seconds=timeout_s)


class SessionRecord(models.Model):
    id = models.CharField(primary_key=True, max_length=64, verbose_name="session")
    # ``db_default``: a node of the release before apps writes sessions of ``default``.
    app = models.CharField(max_length=64, default="default", db_default="default")
    user_id = models.CharField(max_length=128, db_index=True, verbose_name="user")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="sessions")
    connected_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    close_code = models.PositiveIntegerField(null=True, blank=True)
    remote_addr = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    meta = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-connected_at"]
        verbose_name = "session"
        indexes = [models.Index(fields=["node", "closed_at"])]
        permissions = [("disconnect_session", "Can disconnect live sessions (close 4010)")]

    def __str__(self) -> str:
        return f"{self.user_id} on {self.node_id} ({self.id})"

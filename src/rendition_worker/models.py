"""Ownership and state: which source file each rendition was made from, and where it is.

- `Source`: one row per (model, row, field): the file name being rendered, its state and
  error, the claim of the worker rendering it (one worker per source at a time), and what
  belongs to that file only: its focal point, estimated subject and placeholder.
- `Rendition`: one row per (source, spec): the file it wrote and what it made it from.
  The unique constraints make concurrent writers safe: a lost race is an IntegrityError.
- `Tombstone`: a stale file waiting for deletion (DELETE_DELAY, or until a worker runs);
  durable, so nothing is leaked when a broker or worker is down.
- `Intent`: the outbox. Work a change asked for, written in the change's own transaction
  and deleted when a worker takes it up; the relay publishes again what waits too long.
"""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models


class State(models.TextChoices):
    """Where a source or rendition stands."""

    PENDING = "pending", "pending"
    READY = "ready", "ready"
    FAILED = "failed", "failed"


class Source(models.Model):
    """The state of one registered image field of one row."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    # A string so that integer, UUID and text primary keys all fit.
    object_id = models.CharField(max_length=64)
    field = models.CharField(max_length=100)
    # Lets admin inlines and user code reach the row (the object id is a string pk).
    content_object = GenericForeignKey("content_type", "object_id")
    name = models.CharField(max_length=1024, help_text="The source file's storage name.")
    digest = models.CharField(max_length=64, blank=True, help_text="SHA-256 of its content.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    error = models.TextField(blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    claim = models.CharField(max_length=32, blank=True, help_text="Token of the rendering worker.")
    claimed_until = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    render_ms = models.PositiveIntegerField(null=True, blank=True)
    # Of this source version only (a new file clears them): [x, y, width, height] fractions.
    focal_point = models.JSONField(
        null=True, blank=True, help_text="The subject a person set: [x, y, w, h] in 0..1."
    )
    subject = models.JSONField(
        null=True, blank=True, help_text="The estimated subject (FOCAL_POINT 'auto')."
    )
    placeholder_color = models.CharField(max_length=7, blank=True, help_text="#rrggbb")
    placeholder_uri = models.TextField(blank=True, help_text="A tiny blurred preview.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["content_type", "object_id", "field"], name="rendition_worker_one_source"
            )
        ]
        indexes = [
            models.Index(fields=["state"], name="rendition_worker_source_state"),
            # Renders in the last hour, for the metrics a scaler reads every few seconds.
            models.Index(fields=["finished_at"], name="rendition_worker_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.content_type_id}:{self.object_id}.{self.field} {self.name} ({self.state})"


class Rendition(models.Model):
    """One rendition file of one source version, for one canonical spec."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="renditions")
    spec = models.CharField(max_length=200)
    source_name = models.CharField(max_length=1024, help_text="The file it was made from.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    name = models.CharField(max_length=1024, blank=True, help_text="The rendition's file name.")
    format = models.CharField(max_length=8, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True, help_text="Bytes.")
    encode_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "spec"], name="rendition_worker_one_spec")
        ]
        # The reconciler reads the rows of one storage folder at a time (name LIKE 'p/ab/%');
        # on PostgreSQL only a pattern-ops index serves LIKE prefixes under any collation.
        indexes = [
            models.Index(
                fields=["name"], name="rendition_worker_name", opclasses=["varchar_pattern_ops"]
            )
        ]

    def __str__(self) -> str:
        return f"{self.spec} of {self.source_name} ({self.state})"


class Tombstone(models.Model):
    """A stale file to delete once `delete_after` has passed."""

    class Kind(models.TextChoices):
        RENDITION = "rendition", "rendition"
        ORIGINAL = "original", "original"

    storage = models.CharField(max_length=100, help_text="A STORAGES alias.")
    name = models.CharField(max_length=1024)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    delete_after = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.storage}:{self.name} after {self.delete_after:%Y-%m-%d %H:%M}"


class Intent(models.Model):
    """Work asked for by a committed change that no worker has taken up yet (the outbox)."""

    class Action(models.TextChoices):
        GENERATE = "generate", "generate"
        FORGET = "forget", "forget"

    class Lane(models.TextChoices):
        INTERACTIVE = "interactive", "interactive"
        BULK = "bulk", "bulk"

    action = models.CharField(max_length=16, choices=Action.choices)
    lane = models.CharField(max_length=16, choices=Lane.choices, default=Lane.INTERACTIVE)
    model = models.CharField(max_length=200, help_text="app_label.Model of the changed row.")
    object_id = models.CharField(max_length=64)
    field = models.CharField(max_length=100)
    name = models.CharField(max_length=1024, blank=True, help_text="The new file ('' = none).")
    overwritten = models.BooleanField(default=False)
    retired_original = models.BooleanField(default=False)
    force = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    # When the relay publishes it (again) if no worker has taken it up by then.
    due_at = models.DateTimeField(db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Relay publishes so far.")

    def __str__(self) -> str:
        return f"{self.action} {self.model} pk={self.object_id} {self.field} {self.name!r}"

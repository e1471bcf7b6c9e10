"""Models a site would have: integer and UUID primary keys, a cascade, two image fields."""

from __future__ import annotations

import uuid

from django.db import models


class Album(models.Model):
    title = models.CharField(max_length=100, default="")


class Photo(models.Model):
    title = models.CharField(max_length=100, default="")
    album = models.ForeignKey(Album, null=True, blank=True, on_delete=models.CASCADE)
    image = models.ImageField(upload_to="photos", blank=True)
    cover = models.ImageField(upload_to="covers", blank=True)


class Poster(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    image = models.ImageField(upload_to="posters", blank=True)


class Plain(models.Model):
    """A model the app does not watch, for the save-overhead benchmark and signal tests."""

    image = models.ImageField(upload_to="plain", blank=True)

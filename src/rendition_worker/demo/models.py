"""The demo's one model: a titled photo whose image gets `hero` and `thumb` renditions."""

from __future__ import annotations

from django.db import models


class Photo(models.Model):
    """An uploaded photo."""

    title = models.CharField(max_length=200)
    image = models.ImageField(upload_to="photos/")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-uploaded_at", "-pk")

    def __str__(self) -> str:
        return self.title

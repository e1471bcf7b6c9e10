"""The pure rendition engine: specs, geometry, naming and pixels; no Django, no Celery."""

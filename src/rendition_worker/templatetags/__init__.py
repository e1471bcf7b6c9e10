"""Template tags of rendition-worker: `{% load renditions %}`."""

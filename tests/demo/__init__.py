"""Tests of the demo site: its settings, its pages and `rendition-worker demo` end to end."""

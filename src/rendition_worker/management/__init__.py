"""Django management commands of rendition-worker."""

"""The `renditions` command."""

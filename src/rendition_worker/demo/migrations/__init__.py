"""Migrations of the demo app."""

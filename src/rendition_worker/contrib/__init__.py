"""Integrations with other frameworks: Django REST framework, Jinja2."""

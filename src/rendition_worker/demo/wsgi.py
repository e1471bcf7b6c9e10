"""The demo's WSGI application: `gunicorn rendition_worker.demo.wsgi`."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rendition_worker.demo.settings")

application = get_wsgi_application()

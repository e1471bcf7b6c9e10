"""Views to mount in a site's URLconf: the metrics a scraper or an autoscaler reads."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.contrib.auth import authenticate
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from rendition_worker.services.metrics import metrics_text

# Who may read the figures: whoever may see the sources in the admin.
PERMISSION = "rendition_worker.view_source"


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The backlog and render figures in the Prometheus text format.

    Protected like an admin page: a signed-in user, or HTTP basic auth (what Prometheus'
    `basic_auth` sends), whose account has the `rendition_worker.view_source` permission.
    """
    # Without AuthenticationMiddleware there is no request.user: basic auth still works.
    signed_in: Any = getattr(request, "user", None)
    user = signed_in if signed_in is not None and signed_in.is_authenticated else None
    user = user or _basic_auth_user(request)
    if user is None:
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Basic realm="rendition-worker metrics"'
        return response
    if not user.has_perm(PERMISSION):
        return HttpResponse(
            f"the permission {PERMISSION} is required\n", status=403, content_type="text/plain"
        )
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)


def _basic_auth_user(request: HttpRequest) -> Any:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, separator, password = decoded.partition(":")
    if not separator:
        return None
    return authenticate(request, username=username, password=password)

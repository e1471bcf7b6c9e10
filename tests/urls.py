from django.contrib import admin
from django.urls import path

import rendition_worker.views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", rendition_worker.views.metrics, name="metrics"),
]

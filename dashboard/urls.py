"""The dashboard pages' URLs under ``/dashboard/``."""

from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.page, {"name": "overview"}, name="overview"),
    path("stream/", views.page, {"name": "stream"}, name="stream"),
    path("analytics/", views.page, {"name": "analytics"}, name="analytics"),
]

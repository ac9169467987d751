"""livestream's URLs: ``/metrics`` (Prometheus; off unless METRICS_ENABLED)."""

from django.urls import path

from livestream.observe import views

app_name = "livestream"

urlpatterns = [
    # Off (404) unless LIVESTREAM["METRICS_ENABLED"]; staff or a bearer token only.
    path("metrics", views.metrics, name="metrics"),
]

"""The project's URLs: the dashboard, allauth, hijack, the admin and livestream's /metrics."""

from django.contrib import admin
from django.urls import include, path

from dashboard import views as dashboard_views

urlpatterns = [
    path("", dashboard_views.home),
    path("favicon.ico", dashboard_views.favicon),  # asked for by browsers on pages without the link tag
    path("dashboard/", include("dashboard.urls")),
    path("accounts/", include("allauth.urls")),
    path("platforms/", include("platforms.urls")),
    path("hijack/", include("hijack.urls")),
    path("admin/", admin.site.urls),
    path("", include("alerts.urls")),  # /hooks/alerts/...
    path("", include("broadcast.cloudflare_urls")),  # /hooks/cloudflare/
    path("", include("livestream.urls")),  # /metrics
    path("", include("broadcast.urls")),  # /broadcast/ingest/... (the RTMP ingest's callbacks)
]

"""The Cloudflare webhook's URL (broadcast/cloudflare_webhook.py): POST /hooks/cloudflare/."""

from django.urls import path

from broadcast import cloudflare_webhook

app_name = "cloudflare"

urlpatterns = [
    path("hooks/cloudflare/", cloudflare_webhook.webhook, name="webhook"),
    # Without the trailing slash too: APPEND_SLASH cannot redirect a POST.
    path("hooks/cloudflare", cloudflare_webhook.webhook),
]

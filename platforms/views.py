"""Managing connections from the Stream page: add a custom RTMP target, enable/disable,
remove (POST forms; a user only ever touches their own rows). Saving or deleting a row
starts or stops that platform in the user's running manager (platforms/signals.py)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from platforms.models import PlatformConnection

BACK = "/dashboard/stream/"


@login_required
@require_POST
def add_custom(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()[:100]
    url = request.POST.get("url", "").strip()
    key = request.POST.get("key", "").strip()
    if not name or not key or not url.startswith(("rtmp://", "rtmps://")) or len(url) > 500:
        messages.error(request, "A custom target needs a name, an rtmp:// or rtmps:// URL and a stream key.")
        return redirect(BACK)
    row = PlatformConnection(
        user_id=int(request.user.pk or 0), platform=PlatformConnection.CUSTOM, name=name, url=url
    )
    row.key = key
    row.save()
    return redirect(BACK)


@login_required
@require_POST
def toggle(request: HttpRequest, pk: int) -> HttpResponse:
    row = get_object_or_404(PlatformConnection, pk=pk, user=request.user)
    row.enabled = not row.enabled
    row.save()
    return redirect(BACK)


@login_required
@require_POST
def remove(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(PlatformConnection, pk=pk, user=request.user).delete()
    return redirect(BACK)

"""The dashboard pages (login required); each opens the presence socket (presence.js)."""

from pathlib import Path

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import cache_control

# The site's icon (templates/base.html links it; /favicon.ico serves it to pages that do not).
FAVICON = (Path(__file__).resolve().parent / "static" / "dashboard" / "favicon.svg").read_bytes()

PAGES = {
    "overview": "Overview",
    "stream": "Stream",
    "analytics": "Analytics",
}


def home(request: HttpRequest) -> HttpResponse:
    return redirect("dashboard:overview")


@login_required
def page(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, f"dashboard/{name}.html", {"page": name, "pages": PAGES})


@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    return HttpResponse(FAVICON, content_type="image/svg+xml")

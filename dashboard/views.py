"""The dashboard pages (login required); each opens the presence socket (presence.js)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

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

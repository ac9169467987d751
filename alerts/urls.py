from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("hooks/alerts/rotate/", views.rotate, name="rotate"),
    path("hooks/alerts/<str:user_id>/<str:secret>/", views.webhook, name="webhook"),
    # Without the trailing slash too: a sender that drops it would otherwise meet
    # APPEND_SLASH, which cannot redirect a POST (an error in DEBUG, a GET -> 405 otherwise).
    path("hooks/alerts/<str:user_id>/<str:secret>", views.webhook),
]

from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("hooks/alerts/rotate/", views.rotate, name="rotate"),
    path("hooks/alerts/<str:user_id>/<str:secret>/", views.webhook, name="webhook"),
]

from django.urls import path

from broadcast import views

app_name = "broadcast"

urlpatterns = [
    path("broadcast/ingest/<str:secret>/publish", views.publish, name="ingest-publish"),
    path("broadcast/ingest/<str:secret>/publish_done", views.publish_done, name="ingest-publish-done"),
]

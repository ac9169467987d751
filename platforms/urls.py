from django.urls import path

from platforms import views

app_name = "platforms"
urlpatterns = [
    path("custom/", views.add_custom, name="add_custom"),
    path("<int:pk>/toggle/", views.toggle, name="toggle"),
    path("<int:pk>/remove/", views.remove, name="remove"),
]

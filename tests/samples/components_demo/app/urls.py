from django.urls import path

from . import views

urlpatterns = [
    path("", views.components_demo_view, name="home"),
]

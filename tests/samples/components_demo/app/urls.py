from django.urls import path

from app import views

urlpatterns = [
    path("", views.components_demo_view, name="home"),
]

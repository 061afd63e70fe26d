from django.urls import path

from . import views

urlpatterns = [
    path("", views.reminder_list, name="reminder_list"),
    path("form/", views.reminder_list_form, name="reminder_list_form"),
    path("search/", views.reminder_list_search, name="reminder_list_search"),
]

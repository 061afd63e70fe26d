from django.shortcuts import render

from turbo_async.shortcuts import remove_frame, render_frame  # noqa: F401  (the sample imports both)

from .streams import *  # noqa: F403


def components_demo_view(request):
    return render(request, "app/home.html", {})

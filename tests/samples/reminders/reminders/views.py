from django.shortcuts import render

from turbo_async.shortcuts import remove_frame, render_frame

from .forms import ReminderForm
from .models import Reminder

# Beyond the rename, one change: the sample calls render_frame(template, context), without the
# request that turbo-django 0.4.4's render_frame(request, template_name, context) takes first.
# That call raises TypeError under turbo-django as well (tests/test_compat.py), so the sample's
# add and search never worked there; the request is passed here, as turbo-django's docs do.


def reminder_list(request):
    return render(request, "reminders/reminder_list.html", {"reminders": Reminder.objects.all()})


def reminder_list_form(request):
    if request.method == "POST":
        action = request.POST.get("action")

        if action == "Delete All":
            Reminder.objects.all().delete()
            frame = remove_frame(selector="#reminders li")
            return frame.response

        form = ReminderForm(request.POST)
        if form.is_valid():
            reminder = form.save()
            frame = render_frame(request, "reminders/reminder_list_item.html", {"reminder": reminder}).append(
                id="reminders"
            )
            return frame.response

    else:
        form = ReminderForm()

    return render(request, "reminders/reminder_list_form.html", {"form": form})


def reminder_list_search(request):
    # Post request to search
    reminders = Reminder.objects.filter(reminder_text__icontains=request.POST.get("search", ""))
    frame = render_frame(request, "reminders/reminder_list_items.html", {"reminders": reminders})
    return frame.replace(id="reminders").response

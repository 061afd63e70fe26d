from __future__ import annotations

import time

import turbo_async as turbo

from .models import Document, Probe, ProbeRun, Tag


class DocumentStream(turbo.ModelStream):
    class Meta:
        model = Document

    def on_save(self, document, created, *args, **kwargs):
        self.update(text=document.title, id=f"document-{document.pk}")

    def on_delete(self, document, *args, **kwargs):
        self.remove(id=f"document-{document.pk}")


class TagStream(turbo.ModelStream):
    class Meta:
        model = Tag

    def on_save(self, tag, created, *args, **kwargs):
        TagListStream().append("testapp/tag.html", {"tag": tag}, id="tags")


class TagListStream(turbo.Stream):
    pass


class PrivateStream(turbo.Stream):
    """Only staff may subscribe (security tests: ``user_passes_test`` on every subscribe)."""

    def user_passes_test(self, user):
        return bool(user is not None and user.is_authenticated and user.is_staff)


class NotificationComponent(turbo.UserBroadcastComponent):
    """One user's notification counter (security tests: it reaches only its own user)."""

    template_name = "testapp/notification.html"


class ProbeStream(turbo.ModelStream):
    """Failure tests: a hook that counts its runs (rows of ProbeRun, not streamed), and can be slow
    (to kill its worker mid-task) or raise."""

    class Meta:
        model = Probe

    def on_save(self, probe, created, *args, **kwargs):
        ProbeRun.objects.using(kwargs.get("using", "default")).create(probe_id=probe.pk)
        if probe.sleep:
            time.sleep(probe.sleep)
        if probe.fail:
            raise RuntimeError(f"probe {probe.pk} fails on purpose")
        self.update(text=probe.name, id=f"probe-{probe.pk}")

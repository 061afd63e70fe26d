from __future__ import annotations

import turbo_async as turbo

from .models import Document, Tag


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

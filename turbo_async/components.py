"""Layer 4 (beside streams): components, a block of a page that a stream keeps up to date, as in turbo-django.

>>> class AlertComponent(turbo.BroadcastComponent):
...     template_name = "components/alert.html"
>>> AlertComponent().render(alert_class="warning", alert_content="Server restarting")

In a template: ``{% turbo_component "app:AlertComponent" %}``.
"""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string

from .streams import Stream


class BaseComponent(Stream):
    template_name: str | None = None

    class Meta:
        abstract = True

    def get_context(self) -> dict[str, Any]:
        """The default context of the component."""
        return {}

    def compute_context(self, context: dict[str, Any] | None, **context_kwargs: Any) -> dict[str, Any]:
        new_context = self.get_context()
        if context:
            new_context.update(context)
        new_context.update(context_kwargs)
        return new_context

    def _template(self) -> str:
        if not self.template_name:
            raise ValueError(f"{type(self).__name__} needs a template_name.")
        return self.template_name

    def render(self, context: dict[str, Any] | None = None, **context_kwargs: Any) -> None:
        """Re-render the component on every subscribed page."""
        context = self.compute_context(context, **context_kwargs)
        self.update(self._template(), context, id=self.stream_name)

    def initial_render(self, context: dict[str, Any] | None) -> str:
        """The HTML first rendered on the page."""
        return render_to_string(self._template(), self.compute_context(context))


class BroadcastComponent(BaseComponent):
    """A component that shows the same content to every subscriber."""

    class Meta:
        abstract = True


class UserBroadcastComponent(BaseComponent):
    """A component of one user: only that user may subscribe to it.

    >>> NotificationComponent(request.user).render(count=3)
    """

    class Meta:
        abstract = True

    def __init__(self, user: Any) -> None:
        # Imported here: the auth models cannot be imported before the app registry is ready.
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import AnonymousUser

        super().__init__()
        if user is None:
            user = AnonymousUser()
        elif not isinstance(user, (get_user_model(), AnonymousUser)):
            user = get_user_model()._default_manager.get(pk=user)
        self.user = user

    def get_init_args(self) -> list[Any]:
        # An anonymous visitor's component renders (as in turbo-django); its subscription, to
        # user None, is refused by user_passes_test.
        return [self.user.pk]

    def render(self, context: dict[str, Any] | None = None, **context_kwargs: Any) -> None:
        if self.user.pk is None:
            raise ValueError(
                f"{type(self).__name__}.render() needs a saved, logged-in user: an anonymous "
                "visitor's component has no subscribers."
            )
        super().render(context, **context_kwargs)

    def user_passes_test(self, user: Any) -> bool:
        # turbo-django let any logged-in user subscribe to anybody's component; only its own
        # user may here.
        return bool(user is not None and user.is_authenticated and user.pk == self.user.pk)

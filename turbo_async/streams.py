"""``Stream`` and ``ModelStream``: turbo-django's API, with the work moved after commit.

>>> import turbo_async as turbo
>>> class MessageStream(turbo.ModelStream):
...     class Meta:
...         model = Message
...     def on_save(self, message, created, *args, **kwargs):
...         if created:
...             message.room.stream.append("chat/message.html", {"message": message}, id="messages")
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from . import delivery, names
from .frames import (
    AFTER,
    APPEND,
    BEFORE,
    PREPEND,
    REPLACE,
    UPDATE,
    TurboRender,
    frame_markup,
)

if TYPE_CHECKING:
    from .later import Later

HOOKS = ("on_save", "on_delete")


class StreamMeta(dict[str, Any]):
    """``_meta`` of a stream: the merged ``Meta`` attributes, readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class classproperty:
    def __init__(self, method: Any) -> None:
        self.fget = method

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self.fget(owner)


class Stream:
    """A channel that pages subscribe to with ``{% turbo_subscribe %}``.

    Subclasses may take constructor arguments; return them from :meth:`get_init_args` /
    :meth:`get_init_kwargs` so that the consumer can rebuild the stream from a subscription::

        class RoomListStream(turbo.Stream):
            def add(self, room):
                self.append("chat/room_item.html", {"room": room}, id="rooms")
    """

    _meta: ClassVar[StreamMeta] = StreamMeta(app_name="", abstract=True)

    class Meta:
        abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        meta = StreamMeta()
        for base in reversed(cls.__mro__[1:]):
            meta.update(getattr(base, "_meta", {}))
        declared = cls.__dict__.get("Meta")
        meta.update(
            {k: v for k, v in vars(declared).items() if not k.startswith("__")} if declared else {}
        )
        meta["abstract"] = bool(declared is not None and vars(declared).get("abstract", False))
        if not (declared is not None and "app_name" in vars(declared)):
            meta["app_name"] = ""
        cls._meta = meta
        cls._validate_meta()

    @classmethod
    def _validate_meta(cls) -> None:
        pass

    @classproperty
    def stream_name(cls) -> str:
        """``"<app_label>:<ClassName>"``, e.g. ``"chat:RoomStream"``."""
        klass = cast("type[Stream]", cls)  # classproperty: called with the class
        app_name = klass._meta.get("app_name") or _app_label(klass)
        return f"{app_name}:{klass.__name__}"

    # -- identity -----------------------------------------------------------------------------

    def get_init_args(self) -> list[Any]:
        """JSON-serialisable positional arguments that rebuild this stream."""
        return []

    def get_init_kwargs(self) -> dict[str, Any]:
        """JSON-serialisable keyword arguments that rebuild this stream."""
        return {}

    def get_init_args_json(self) -> str:
        return json.dumps(self.get_init_args(), cls=DjangoJSONEncoder)

    def get_init_kwargs_json(self) -> str:
        return json.dumps(self.get_init_kwargs(), cls=DjangoJSONEncoder)

    @property
    def signed_stream_name(self) -> str:
        """What the page subscribes with: signed, salted, timestamped."""
        return names.sign(self.stream_name, self.get_init_args(), self.get_init_kwargs())

    @property
    def broadcastable_stream_name(self) -> str:
        """The Channels group that the frames of this stream are sent to."""
        return names.group_name(self.stream_name, self.get_init_args(), self.get_init_kwargs())

    def user_passes_test(self, user: Any) -> bool:
        """Whether ``user`` may subscribe; checked on every subscribe. Allows everyone."""
        return True

    # -- actions (turbo-django's signatures) -----------------------------------------------

    def _get_frame(
        self, template: str | None, context: dict[str, Any] | None, text: str | None
    ) -> TurboRender:
        if text:
            return TurboRender(text)
        if template is None:
            raise ValueError("Pass a template name or text= to render a frame.")
        return TurboRender.init_from_template(template, context)

    def _action(
        self,
        action: str,
        template: str | None,
        context: dict[str, Any] | None,
        text: str | None,
        selector: str | None,
        id: str | None,
    ) -> None:
        self._check_target(selector, id)
        frame = self._get_frame(template, context, text)
        self.stream(frame._add_target(selector, id, action))

    @staticmethod
    def _check_target(selector: str | None, id: str | None) -> None:
        if (selector is None) == (id is None):
            raise ValueError("Either selector or id can be used as a parameter.")

    def append(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        """Append rendered ``template`` (or ``text``) to the element ``id`` / ``selector``."""
        self._action(APPEND, template, context, text, selector, id)

    def prepend(self, template: str | None = None, context: dict[str, Any] | None = None,
                text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._action(PREPEND, template, context, text, selector, id)

    def replace(self, template: str | None = None, context: dict[str, Any] | None = None,
                text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._action(REPLACE, template, context, text, selector, id)

    def update(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._action(UPDATE, template, context, text, selector, id)

    def before(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._action(BEFORE, template, context, text, selector, id)

    def after(self, template: str | None = None, context: dict[str, Any] | None = None,
              text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._action(AFTER, template, context, text, selector, id)

    def remove(self, selector: str | None = None, id: str | None = None) -> None:
        """Remove the element ``id`` (or every element matching ``selector``)."""
        self._check_target(selector, id)
        self.stream(TurboRender().remove(selector, id))

    def refresh(self) -> None:
        """Ask subscribed pages to refresh (Turbo 8 ``refresh`` action)."""
        self.stream_raw(frame_markup("refresh"))

    def stream(self, frame: TurboRender | str) -> None:
        """Send a rendered :class:`TurboRender` (or its markup) to the subscribers."""
        self.stream_raw(frame.rendered_template if isinstance(frame, TurboRender) else frame)

    def stream_raw(self, raw_text: str) -> None:
        """Send markup as it is. Inside a broadcast task the frames of one stream are batched
        into one ``group_send``; anywhere else they are sent now, as in turbo-django."""
        delivery.send(self.broadcastable_stream_name, self.stream_name, str(raw_text))

    @property
    def later(self) -> Later:
        """The same actions, run by a Celery worker after commit::

            room.stream.later.append("chat/message.html", {"message": message}, id="messages")
        """
        from .later import Later

        return Later(self)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Stream)
            and other.broadcastable_stream_name == self.broadcastable_stream_name
        )

    def __hash__(self) -> int:
        return hash(self.broadcastable_stream_name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stream_name} {self.get_init_args()!r}>"


M = TypeVar("M", bound=models.Model)


class ModelStream(Stream, Generic[M]):
    """The stream of one model instance; its hooks run in a Celery worker after commit.

    Define ``on_save(self, instance, created, *args, **kwargs)`` and/or
    ``on_delete(self, instance, *args, **kwargs)``. Every instance of ``Meta.model`` gains a
    ``.stream`` attribute (a lazy descriptor: loading rows costs nothing).
    """

    class Meta:
        abstract = True

    pk: Any

    def __init__(self, pk: Any, instance: M | None = None) -> None:
        super().__init__()
        self.pk = pk
        if instance is not None:
            self.__dict__["instance"] = instance

    @classmethod
    def _validate_meta(cls) -> None:
        if cls._meta.abstract:
            return
        model = cls._meta.get("model")
        if model is None:
            raise ImproperlyConfigured(
                f"{cls.__name__} is a ModelStream without a model. Add "
                "'class Meta: model = YourModel' to it (or 'abstract = True' for a base class)."
            )
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise ImproperlyConfigured(
                f"{cls.__name__}.Meta.model must be a Django model class, not {model!r}."
            )

    @classmethod
    def from_pk(cls, pk: Any) -> ModelStream[M]:
        return cls(pk, None)

    @classmethod
    def from_instance(cls, instance: M) -> ModelStream[M]:
        return cls(instance.pk, instance)

    @cached_property
    def instance(self) -> M:
        model: type[M] = self._meta.model
        return model._base_manager.get(pk=self.pk)

    def get_init_args(self) -> list[Any]:
        if self.pk is None:
            raise ValueError(
                f"Cannot broadcast to an unsaved {self._meta.model.__name__}: it has no primary "
                "key yet. Save it first."
            )
        return [self.pk]


class StreamDescriptor:
    """``instance.stream``: built on access, so that loading rows costs nothing extra."""

    def __init__(self, stream_class: type[ModelStream[Any]]) -> None:
        self.stream_class = stream_class

    def __get__(self, instance: models.Model | None, owner: type | None = None) -> Any:
        if instance is None:
            return self.stream_class
        return self.stream_class.from_instance(instance)


def _app_label(cls: type) -> str:
    app_config = apps.get_containing_app_config(cls.__module__)
    if app_config is not None:
        return app_config.label
    return cls.__module__.rsplit(".", 2)[-2] if "." in cls.__module__ else cls.__module__

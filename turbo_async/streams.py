"""Layer 4: ``Stream`` and ``ModelStream``, turbo-django's API with the work moved after commit.

An action (``append``, ..., ``remove``, ``refresh``) renders its frame and hands it to
:mod:`~turbo_async.delivery`: sent now, or collected when it runs inside a broadcast. The same
stream seen through ``.later`` records the action in the current transaction instead
(:mod:`~turbo_async.pending`), and a worker renders and sends it after the commit.

Turbo 8 additions: ``method="morph"`` on ``replace``/``update``, custom actions
(:meth:`Stream.action`), refreshes debounced across workers (:mod:`~turbo_async.refreshes`) and
carrying the request id of the change that caused them, and ``Meta.broadcasts_refreshes`` /
``Meta.refresh_parent`` on a ``ModelStream`` (run by the worker, no hook needed).

>>> import turbo_async as turbo
>>> class MessageStream(turbo.ModelStream):
...     class Meta:
...         model = Message
...     def on_save(self, message, created, *args, **kwargs):
...         if created:
...             message.room.stream.append("chat/message.html", {"message": message}, id="messages")
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.functional import classproperty

from . import codec, delivery, names, pending, refreshes
from .changes import DELETE, SAVE, StreamAction, current_request_id
from .frames import (
    ACTIONS,
    AFTER,
    APPEND,
    BEFORE,
    PREPEND,
    REFRESH,
    REMOVE,
    REPLACE,
    UPDATE,
    TurboRender,
    action_markup,
    validate_action_name,
    validate_attributes,
    validate_method,
)

RAW = "raw"
"""A deferred ``stream_raw(markup)``: the markup is sent as it is."""
CUSTOM = "custom"
"""The option that marks a deferred :meth:`Stream.action` (its action is the custom name)."""

class StreamMeta(dict[str, Any]):
    """``_meta`` of a stream: the merged ``Meta`` attributes, readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class Stream:
    """A channel that pages subscribe to with ``{% turbo_subscribe %}``.

    Subclasses may take constructor arguments; return them from :meth:`get_init_args` /
    :meth:`get_init_kwargs` so that the consumer can rebuild the stream from a subscription::

        class RoomListStream(turbo.Stream):
            def add(self, room):
                self.append("chat/room_item.html", {"room": room}, id="rooms")
    """

    _meta: ClassVar[StreamMeta] = StreamMeta(app_name="", abstract=True)
    _deferred: bool = False  # True on the copy that ``.later`` returns

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

    @staticmethod
    def _validate_target(selector: str | None, id: str | None) -> None:
        if (selector is None) == (id is None):
            raise ValueError("Either selector or id can be used as a parameter.")

    def broadcast_action(
        self,
        action: str,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        text: str | None = None,
        selector: str | None = None,
        id: str | None = None,
        *,
        method: str | None = None,
        attributes: dict[str, Any] | None = None,
        custom: bool = False,
    ) -> None:
        """Render the frame of ``action`` and send it (as turbo-rails' ``broadcast_action_to``):
        every action method (:meth:`append`, ..., :meth:`refresh`, :meth:`action`) is this call.

        Through :attr:`later` the same call is recorded, with these keyword arguments, in the
        current transaction, and a worker makes it after the commit
        (``stream.broadcast_action(action, **options)``, as turbo-rails' ``broadcast_*_later``
        jobs do)::

            room.stream.broadcast_action("append", "chat/message.html", {"message": m}, id="messages")
            # is room.stream.append("chat/message.html", {"message": m}, id="messages")

        ``custom`` is :meth:`action`'s: any valid name, the target optional, ``attributes`` on
        the frame. Names, methods and attributes are checked here, before anything is deferred: a
        ``ValueError`` says what is wrong.
        """
        if custom:
            validate_action_name(action)
            validate_attributes(attributes)
            if selector is not None and id is not None:
                raise ValueError("Pass target= or targets=, not both.")
        else:
            if action not in (*ACTIONS, REFRESH):
                raise ValueError(
                    f"Unknown stream action {action!r}; expected one of {', '.join((*ACTIONS, REFRESH))}, "
                    "or custom=True for a custom action."
                )
            if action != REFRESH:
                self._validate_target(selector, id)
            if action not in (REFRESH, REMOVE) and not text and template is None:
                raise ValueError("Pass a template name or text= to render a frame.")
            validate_method(action, method)
        if self._deferred:
            options: dict[str, Any] = {"selector": selector, "id": id}
            if custom or action not in (REFRESH, REMOVE):
                options.update(template=template, context=context, text=text)
            if method:
                options["method"] = method
            if custom:
                options.update(custom=True, attributes=attributes or {})
            self._defer(action, options)
        elif custom:
            html = self._get_frame(template, context, text).inner_html if (text or template) else ""
            self.stream_raw(
                action_markup(action, target=id, targets=selector, html=html, attributes=attributes)
            )
        elif action == REFRESH:
            refreshes.refresh(self.broadcastable_stream_name, self.stream_name, current_request_id())
        elif action == REMOVE:
            self.stream(TurboRender().remove(selector, id))
        else:
            frame = self._get_frame(template, context, text)
            self.stream(frame._add_target(selector, id, action, method))

    def _defer(self, action: str, options: dict[str, Any]) -> None:
        pending.defer(
            StreamAction(
                self.stream_name,
                self.get_init_args(),
                self.get_init_kwargs(),
                action,
                codec.encode(options),
                shadow=f"{self.stream_name.replace(':', '.')}.{action}",
                request_id=current_request_id(),
            )
        )

    def append(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        """Append rendered ``template`` (or ``text``) to the element ``id`` / ``selector``."""
        self.broadcast_action(APPEND, template, context, text, selector, id)

    def prepend(self, template: str | None = None, context: dict[str, Any] | None = None,
                text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self.broadcast_action(PREPEND, template, context, text, selector, id)

    def replace(self, template: str | None = None, context: dict[str, Any] | None = None,
                text: str | None = None, selector: str | None = None, id: str | None = None,
                method: str | None = None) -> None:
        """Replace the element; ``method="morph"`` morphs it into the new one (Turbo 8)."""
        self.broadcast_action(REPLACE, template, context, text, selector, id, method=method)

    def update(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None,
               method: str | None = None) -> None:
        """Update the element's content; ``method="morph"`` morphs it (Turbo 8)."""
        self.broadcast_action(UPDATE, template, context, text, selector, id, method=method)

    def before(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self.broadcast_action(BEFORE, template, context, text, selector, id)

    def after(self, template: str | None = None, context: dict[str, Any] | None = None,
              text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self.broadcast_action(AFTER, template, context, text, selector, id)

    def remove(self, selector: str | None = None, id: str | None = None) -> None:
        """Remove the element ``id`` (or every element matching ``selector``)."""
        self.broadcast_action(REMOVE, selector=selector, id=id)

    def refresh(self) -> None:
        """Ask subscribed pages to refresh (Turbo 8 ``refresh`` action).

        In a worker the refreshes of one stream are debounced across processes
        (``REFRESH_DEBOUNCE``, ``REFRESH_MAX_WAIT``); the frame carries the ``request-id`` of the
        request that caused it, which that request's page ignores.
        """
        self.broadcast_action(REFRESH)

    def action(
        self,
        name: str,
        template: str | None = None,
        context: dict[str, Any] | None = None,
        text: str | None = None,
        target: str | None = None,
        targets: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """A custom action, ``Turbo.StreamActions[name]`` on the page (as turbo-rails'
        ``broadcast_action_to``)::

            room.stream.action("notify", text="Saved", target="alerts",
                               attributes={"data-level": "info"})

        ``name`` and the attribute names are checked (a ``ValueError`` names a bad one); the
        values and the content are escaped. The target is optional.
        """
        self.broadcast_action(name, template, context, text, targets, target, attributes=attributes, custom=True)

    def stream(self, frame: TurboRender | str) -> None:
        """Send a rendered :class:`TurboRender` (or its markup) to the subscribers."""
        self.stream_raw(frame.rendered_template if isinstance(frame, TurboRender) else frame)

    def stream_raw(self, raw_text: str) -> None:
        """Send markup as it is. Inside a broadcast the frames of one stream are collected into
        one ``group_send``; anywhere else they are sent now, as in turbo-django."""
        if self._deferred:
            self._defer(RAW, {"text": str(raw_text)})
            return
        delivery.send(self.broadcastable_stream_name, self.stream_name, str(raw_text))

    @property
    def later(self) -> Stream:
        """This stream, with every action run by a Celery worker after the commit::

            room.stream.later.append("chat/message.html", {"message": message}, id="messages")

        Model instances in the context travel as references and are reloaded by the worker
        (:mod:`turbo_async.codec`); anything else must be JSON-serialisable.
        """
        deferred = copy.copy(self)
        deferred._deferred = True
        return deferred

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

    Or declare refreshes, with no hook (as turbo-rails' ``broadcasts_refreshes``)::

        class MessageStream(turbo.ModelStream):
            class Meta:
                model = Message
                broadcasts_refreshes = True   # refresh the message's own stream on save/delete
                refresh_parent = "room"       # and its room's stream (a foreign key's name)
    """

    class Meta:
        abstract = True

    hooks: ClassVar[dict[str, str]] = {SAVE: "on_save", DELETE: "on_delete"}
    """The hook a worker calls for each event: the one place these names are spelled."""

    pk: Any

    @classmethod
    def hook(cls, event: str) -> Callable[..., Any] | None:
        """The hook function this stream defines for ``event``, or None."""
        function = getattr(cls, cls.hooks[event], None)
        return function if callable(function) else None

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
        if not isinstance(cls._meta.get("broadcasts_refreshes", False), bool):
            raise ImproperlyConfigured(
                f"{cls.__name__}.Meta.broadcasts_refreshes must be True or False, "
                f"not {cls._meta.broadcasts_refreshes!r}."
            )
        parent = cls._meta.get("refresh_parent")
        if parent is not None:
            field = next((f for f in model._meta.concrete_fields if f.name == parent), None)
            if field is None or not (field.many_to_one or field.one_to_one):
                raise ImproperlyConfigured(
                    f"{cls.__name__}.Meta.refresh_parent must name a ForeignKey or OneToOneField of "
                    f"{model.__name__}, not {parent!r}."
                )

    @classmethod
    def refreshes_declared(cls) -> bool:
        """Whether ``Meta`` asks for refreshes on save and delete (no hook needed)."""
        return bool(cls._meta.get("broadcasts_refreshes") or cls._meta.get("refresh_parent"))

    def refresh_declared(self, instance: M) -> None:
        """The refreshes ``Meta`` declares for a saved or deleted ``instance``: its own stream's
        (``broadcasts_refreshes``) and its parent's (``refresh_parent``), without loading the parent."""
        if self._meta.get("broadcasts_refreshes"):
            self.refresh()
        parent = self._meta.get("refresh_parent")
        if not parent:
            return
        field = instance._meta.get_field(parent)
        parent_pk = getattr(instance, field.attname)  # type: ignore[union-attr]
        if parent_pk is None:
            return
        parent_class = getattr(field.related_model, "stream", None)
        if not (isinstance(parent_class, type) and issubclass(parent_class, ModelStream)):
            raise ImproperlyConfigured(
                f"{type(self).__name__}.Meta.refresh_parent = {parent!r}: "
                f"{getattr(field.related_model, '__name__', field.related_model)} has no ModelStream "
                "to refresh; define one (it needs no hook)."
            )
        parent_class.from_pk(parent_pk).refresh()

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


def _app_label(cls: type) -> str:
    # Outside an installed app turbo-django names a stream ":Name"; so do we.
    app_config = apps.get_containing_app_config(cls.__module__)
    return app_config.label if app_config is not None else ""

"""The hand-written fan-out the latency benchmark's ``raw`` variant measures (no Django, Channels,
Celery or turbo_async in the web process): the floor of this machine for one frame to reach every
socket through Redis, uvicorn and ``websockets``.

A plain ASGI application. A client sends ``{"type": "subscribe", "signed_channel_name": ROOM}``
and is answered ``{"type": "subscribed"}`` (what bench_subscribers.py expects). The first
WebSocket of the process starts one task that listens to the Redis channels ``raw:*`` (redis-py's
asyncio pub/sub) and sends each message, as it came, to the sockets of its room, one
``websocket.send`` after another: what one would write by hand. The saving side publishes
``raw:ROOM`` right after the commit (bench_latency.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import redis.asyncio

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
Send = Any

rooms: dict[str, set[Send]] = {}
listener: asyncio.Task[None] | None = None
listening = asyncio.Event()


async def listen() -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    await pubsub.psubscribe("raw:*")
    listening.set()
    async for message in pubsub.listen():
        if message["type"] != "pmessage":
            continue
        room = message["channel"].decode().removeprefix("raw:")
        text = message["data"].decode()
        for send in list(rooms.get(room, ())):
            try:
                await send({"type": "websocket.send", "text": text})
            except Exception:  # closed meanwhile
                rooms[room].discard(send)


async def application(scope: dict[str, Any], receive: Any, send: Send) -> None:
    global listener
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    joined: list[str] = []
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.connect":
                if listener is None:
                    listener = asyncio.create_task(listen())
                await listening.wait()  # listening before any subscriber is answered
                await send({"type": "websocket.accept"})
            elif event["type"] == "websocket.receive":
                room = str(json.loads(event.get("text") or "{}").get("signed_channel_name"))
                rooms.setdefault(room, set()).add(send)
                joined.append(room)
                await send({"type": "websocket.send", "text": json.dumps({"type": "subscribed"})})
            elif event["type"] == "websocket.disconnect":
                return
    finally:
        for room in joined:
            rooms.get(room, set()).discard(send)

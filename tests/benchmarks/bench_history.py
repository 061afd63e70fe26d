"""Offsets and history (issue 12): what numbering and keeping each publication costs a worker,
and how long a page takes to catch up on 100 missed frames. Nothing is asserted; it prints a
table, each figure against a baseline measured in the same run.

1. Worker broadcasts/s: ``turbo_async.worker.broadcast_change`` (what a broadcast task runs:
   reload the message, run ``MessageStream.on_save``, render, deliver) for saved messages of one
   room, in this process, on the real Redis channel layer, with alternating rounds of
   ``OFFSETS`` off (the baseline), offsets without history (``HISTORY_SIZE`` 0) and offsets with
   history (the defaults, 100 batches / 300 s). The stream has no subscriber: the figure is the
   worker's own cost (a ``group_send`` to an empty group plus, with offsets, one Lua call).
2. Catch-up: a client subscribed to the room through a real uvicorn (tests.benchmarks.asgi)
   reads one frame, closes, misses 100 batches, then subscribes again with its offset; the time
   from sending that subscribe until the 100th replayed frame is read. Baselines: the same
   subscribe without an offset (the acknowledgement only), and 100 batches delivered live to a
   subscribed socket, sent back to back by this process as in the catch-up's set-up (from the
   first send until the 100th frame is read: what a page that stayed connected spends on them).

    DJANGO_SETTINGS_MODULE=tests.benchmarks.settings BENCH_REDIS_URL=redis://127.0.0.1:6379/0 \\
        BENCH_DB=/tmp/bench_history.sqlite3 python -m tests.benchmarks.bench_history

Run by run.py (``make bench``); alone, it prints its own table. Under a minute.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.common import percentile, setup_django, write_result

ROUNDS = int(os.environ.get("BENCH_HISTORY_ROUNDS", "5"))
PER_ROUND = int(os.environ.get("BENCH_HISTORY_PER_ROUND", "200"))
MISSED = 100
CATCH_UPS = int(os.environ.get("BENCH_CATCH_UPS", "8"))
MODES: dict[str, dict[str, Any]] = {
    "off": {"OFFSETS": False},
    "offsets": {"OFFSETS": True, "HISTORY_SIZE": 0},
    "history": {"OFFSETS": True},
}
"""The ``TURBO_ASYNC`` of each worker variant; ``off`` is the baseline."""


def main() -> None:
    setup_django()
    from django.apps import apps

    from turbo_async import suppress

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    with suppress():
        room = Room.objects.create(name="history")
        Message.objects.bulk_create([Message(room=room, text=f"message {i}") for i in range(PER_ROUND)])
    pks = list(Message.objects.filter(room=room).values_list("pk", flat=True))
    result: dict[str, Any] = {"per_round": PER_ROUND, "rounds": ROUNDS, "missed": MISSED}
    result |= worker_rates(pks)
    result |= catch_up(room)
    print(table(result))
    write_result(result)


def worker_rates(pks: list[int]) -> dict[str, Any]:
    """Broadcasts/s per ``MODES`` variant: the median of ``ROUNDS`` rounds, alternating variants
    so that a machine busy for a while weighs on all of them."""
    from django.test import override_settings

    from turbo_async.worker import broadcast_change

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for settings in MODES.values():  # a warm-up round each: imports, templates, scripts
        with override_settings(TURBO_ASYNC=settings):
            for pk in pks[:50]:
                broadcast_change("chat.message", pk, "save", True)
    for _ in range(ROUNDS):
        for mode, settings in MODES.items():
            with override_settings(TURBO_ASYNC=settings):
                began = time.perf_counter()
                for pk in pks:
                    broadcast_change("chat.message", pk, "save", True)
                rates[mode].append(len(pks) / (time.perf_counter() - began))
    return {f"worker_{mode}_per_s": statistics.median(values) for mode, values in rates.items()} | {
        "worker_rates": rates
    }


def catch_up(room: Any) -> dict[str, Any]:
    """Times (ms) of a resubscription 100 batches behind, of a plain subscribe, and of 100 live
    batches, through a real uvicorn."""
    from tests.services import StreamClient, Uvicorn
    from turbo_async import delivery

    web = Uvicorn(Path(tempfile.mkdtemp(prefix="bench_history_")), name="web", app="tests.benchmarks.asgi:application")
    web.start()
    group = room.stream.broadcastable_stream_name
    signed = room.stream.signed_stream_name

    def send(n: int) -> None:
        delivery.send(group, "chat:RoomStream", f'<turbo-stream action="append" target="messages"><template><p>{n}</p></template></turbo-stream>')

    def subscribe(client: StreamClient, **position: Any) -> None:
        client.send_raw(json.dumps({"type": "subscribe", "signed_channel_name": signed, **position}))
        reply = client.receive(timeout=10)
        assert reply.get("type") == "subscribed", reply

    catch_ups: list[float] = []
    subscribes: list[float] = []
    lives: list[float] = []
    try:
        for _ in range(CATCH_UPS):
            # A page that read one frame, then went away.
            client = StreamClient(web.ws_url, web.origin)
            subscribe(client)
            send(0)
            frame = client.receive(timeout=10)
            position = {"epoch": frame["epoch"], "offset": frame["offset"]}
            client.close()
            for n in range(1, MISSED + 1):
                send(n)
            # Back: the same subscribe as a page that kept its offset, timed to the last frame.
            client = StreamClient(web.ws_url, web.origin)
            began = time.perf_counter()
            subscribe(client, **position)
            offsets = [client.receive(timeout=10)["offset"] for _ in range(MISSED)]
            catch_ups.append(time.perf_counter() - began)
            assert offsets == list(range(position["offset"] + 1, position["offset"] + MISSED + 1)), offsets
            client.close()

            # Baselines: a subscribe without an offset, then 100 batches live.
            client = StreamClient(web.ws_url, web.origin)
            began = time.perf_counter()
            subscribe(client)
            subscribes.append(time.perf_counter() - began)
            began = time.perf_counter()
            for n in range(MISSED):
                send(n)
            for _ in range(MISSED):
                client.receive(timeout=10)
            lives.append(time.perf_counter() - began)
            client.close()
        log = web.log()
    finally:
        web.stop()
    if "Traceback" in log:
        raise RuntimeError(f"uvicorn logged an error:\n{log[-3000:]}")
    ms = lambda values: [v * 1000 for v in values]  # noqa: E731
    return {
        "catch_up_ms": ms(catch_ups), "subscribe_ms": ms(subscribes), "live_ms": ms(lives),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(benchmark, figure, against the baseline) rows; run.py prints them in its table too."""
    off = result["worker_off_per_s"]
    out = [
        ("7. worker broadcasts/s, OFFSETS off", f"{off:.0f}", "baseline"),
        *(
            (f"7. … {label}", f"{result[key]:.0f}", f"{result[key] / off:.2f}x")
            for key, label in (
                ("worker_offsets_per_s", "offsets, HISTORY_SIZE 0"),
                ("worker_history_per_s", "offsets + history (100 / 300 s)"),
            )
        ),
    ]
    catch, sub, live = (result[k] for k in ("catch_up_ms", "subscribe_ms", "live_ms"))
    catch_p50, live_p50 = statistics.median(catch), statistics.median(live)
    out += [
        (
            f"8. catch-up of {result['missed']} missed frames, ms",
            f"p50 {catch_p50:.1f} p90 {percentile(catch, 90):.1f}",
            f"{catch_p50 / live_p50:.2f}x live",
        ),
        (
            f"8. … {result['missed']} frames live (sent back to back), ms",
            f"p50 {live_p50:.1f} p90 {percentile(live, 90):.1f}",
            "baseline",
        ),
        (
            "8. … subscribe without offset, ms",
            f"p50 {statistics.median(sub):.1f} p90 {percentile(sub, 90):.1f}",
            f"catch-up = {catch_p50 / statistics.median(sub):.1f}x the ack alone",
        ),
    ]
    return out


def table(result: dict[str, Any]) -> str:
    lines = [("Benchmark", "Figure", "Result"), *rows(result)]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([rule, body[0], rule, *body[1:], rule])


if __name__ == "__main__":
    if "--table" in sys.argv:  # re-tabulate a result line: python -m ... --table < output
        from tests.benchmarks.common import read_result

        print(table(read_result(sys.stdin.read())))
    else:
        main()

"""Memory and keys over a soak, sampled every ``interval`` seconds in a thread of the orchestrator:
the RSS of every web and worker process (a prefork worker with its pool processes), the channel
layer's and the broker's Redis (``used_memory``, key count; the broker's queue of waiting tasks), the layer's groups (pub/sub channels
with a subscriber, or ``asgi:group:*`` keys under the core layer), the sockets and subscriptions the
web processes report (their status records, ``TURBO_ASYNC["METRICS"]``, as ``manage.py
turbo_streams --status`` reads them), the writer's outbox backlog and the history entries of every
stream.

:meth:`Sampler.check` is the flatness check: after a warm-up of the first ``WARM_UP`` of the run,
the least-squares trend of each series over the rest, taken between the scheduled restarts, must
move it by at most ``TREND_BOUND`` of its mean (key and group counts: or by at most
``COUNT_SLACK``). A process restarted on purpose is checked from ``WARM_UP`` of the run after its
restart (and not at all when too little of the run is left by then).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from tests.services import Process, rss_mb

TREND_BOUND = 0.05
WARM_UP = 0.2
SETTLE = 0.1
"""Of the run, after each restart, before the trend is taken again."""
MIN_PIECE = 0.1
"""The shortest piece of the run a trend is taken over."""
COUNTS = ("layer_keys", "broker_keys", "groups")
COUNT_SLACK = 3
"""Key and group counts may also move by this many: the broker's queue keys come and go with each
task, a web process's status key with its restart."""
SHOWN = {
    "layer_used_memory": "it counts the client buffers too (layer_memory_kept is held to the bound)",
    "layer_clients_memory": "client buffers come and go with each reply",
    "broker_clients_memory": "client buffers come and go with each reply",
    "broker_used_memory": "Celery's broker: it follows the queue's backlog, which follows the machine's load",
    "broker_queue": "tasks waiting for a worker: the machine's load decides it",
}
"""Series sampled and drawn but not held to the bound, and why."""
OUTBOX_BOUND = 500
"""Changes the writer's outbox may hold at once (ten seconds of writes): the broker keeps up."""


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and its descendants (a prefork worker's pool processes), in MB."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += rss_mb(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, RuntimeError):
            continue
        pending.extend(int(child) for child in children)
    return total


class Sampler:
    def __init__(self, soak: Any, started: float, interval: float = 10.0) -> None:
        self.soak = soak
        self.started = started
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.restarts: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def restarted(self, name: str, at: float) -> None:
        self.restarts[name] = at

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # a sample lost is reported, the soak goes on
                print(f"  sampler: {exc!r}", flush=True)
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, Any]:
        from turbo_async import metrics

        soak = self.soak
        layer, broker = soak.layer.client(), soak.broker.client()
        processes: dict[str, Process] = {**{w.name: w for w in soak.workers}, **{w.name: w for w in soak.webs}}
        rss = {name: round(tree_rss_mb(p.process.pid), 1) for name, p in processes.items()
               if p.process is not None and p.process.poll() is None}
        sockets = subscriptions = 0
        alive = {p.process.pid for p in soak.webs if p.process is not None}
        for key in layer.scan_iter(match=metrics.STATUS_KEY + "*", count=500):
            raw = layer.get(key)
            if raw and json.loads(raw).get("pid") in alive:  # not a stopped process's last record
                record = json.loads(raw)
                sockets += int(record.get("sockets", 0))
                subscriptions += int(record.get("subscriptions", 0))
        histories = sum(int(layer.xlen(key)) for key in layer.scan_iter(match="turbo_async:hist:*", count=500))
        groups = len(layer.pubsub_channels()) + sum(1 for _ in layer.scan_iter(match="asgi:group:*", count=500))
        return {
            "t": round(time.monotonic() - self.started, 1),
            "rss_mb": rss,
            "layer_used_memory": int(layer.info("memory")["used_memory"]),
            "layer_keys": int(layer.dbsize()),
            "broker_used_memory": int(broker.info("memory")["used_memory"]),
            "broker_keys": int(broker.dbsize()),
            "broker_queue": int(broker.llen("celery")),  # tasks waiting for a worker
            # Client buffers (of pub/sub readers, say) count in used_memory: apart, to tell them from data.
            "layer_clients_memory": int(layer.info("memory").get("mem_clients_normal", 0)),
            "broker_clients_memory": int(broker.info("memory").get("mem_clients_normal", 0)),
            "groups": groups,
            "sockets": sockets,
            "subscriptions": subscriptions,
            "outbox": int(soak.writer_status().get("outbox", 0)),
            "history_entries": histories,
        }

    def series(self) -> dict[str, list[tuple[float, float]]]:
        """Every sampled series by name: ``[(t, value), ...]``."""
        found: dict[str, list[tuple[float, float]]] = {}
        for sample in self.samples:
            for name, value in sample["rss_mb"].items():
                found.setdefault(f"rss_mb {name}", []).append((sample["t"], value))
            for name, value in sample.items():
                if name not in ("t", "rss_mb"):
                    found.setdefault(name, []).append((sample["t"], float(value)))
            if "layer_clients_memory" in sample:
                # What the layer's Redis keeps, without the buffers of its clients' replies.
                kept = sample["layer_used_memory"] - sample["layer_clients_memory"]
                found.setdefault("layer_memory_kept", []).append((sample["t"], float(kept)))
        return found

    def check(self) -> list[str]:
        """Print each series' trend after the warm-up against the bound; the series over it.

        The trend is taken piecewise between the scheduled restarts, each piece from ``SETTLE`` of
        the run after its restart: a web process's restart moves its sockets onto the others,
        whose RSS then stays at the new level (CPython keeps its arenas), and a worker's restart
        starts a new process. Those steps are printed beside the trends, not counted as one."""
        duration = max((s["t"] for s in self.samples), default=0.0)
        cuts = sorted(self.restarts.values())
        print(f"\nmemory and keys, every {self.interval:.0f} s ({len(self.samples)} samples): after a warm-up of "
              f"{100 * WARM_UP:.0f}% of the run, each series' trend (least squares, between the restarts, each piece "
              f"from {100 * SETTLE:.0f}% of the run after its restart) must stay within {100 * TREND_BOUND:.0f}% of "
              f"its mean (counts: or within {COUNT_SLACK})")
        failed = []
        for name, points in self.series().items():
            if name in SHOWN:
                first, last = points[0][1], points[-1][1]
                print(f"  {name:<24} {first:,.0f} at {points[0][0]:.0f} s, {last:,.0f} at {points[-1][0]:.0f} s "
                      f"(shown, not checked: {SHOWN[name]})")
                continue
            if name == "outbox":
                peak = max(value for _, value in points)
                holds = peak <= OUTBOX_BOUND
                print(f"  {name:<24} peak {peak:.0f} (bound {OUTBOX_BOUND})  {'holds' if holds else 'OVER'}")
                if not holds:
                    failed.append(f"outbox over {OUTBOX_BOUND}")
                continue
            process = name.removeprefix("rss_mb ")
            if process in self.restarts:
                pieces = [(self.restarts[process] + WARM_UP * duration, duration + 1)]
            else:
                starts = [WARM_UP * duration, *(cut + SETTLE * duration for cut in cuts)]
                ends = [*cuts, duration + 1]
                pieces = [(start, end) for start, end in zip(starts, ends, strict=True) if start < end]
            results = []
            for start, end in pieces:
                window = [(t, v) for t, v in points if start <= t < end]
                if len(window) < 3 or window[-1][0] - window[0][0] < MIN_PIECE * duration:
                    continue
                change, mean = trend(window)
                relative = change / mean if mean else 0.0
                holds = abs(relative) <= TREND_BOUND or (name in COUNTS and abs(change) <= COUNT_SLACK)
                results.append((window[0][0], window[-1][0], mean, relative, holds))
            if not results:
                print(f"  {name:<24} restarted at {self.restarts.get(process, 0):.0f} s: too little of the run after it")
                continue
            text = "; ".join(f"{a:.0f}-{b:.0f} s: mean {mean:,.1f}, trend {100 * relative:+.2f}%"
                             for a, b, mean, relative, _ in results)
            holds = all(result[-1] for result in results)
            print(f"  {name:<24} {text}  {'holds' if holds else 'OVER'}")
            if not holds:
                failed.append(f"{name} trend {', '.join(f'{100 * r[3]:+.1f}%' for r in results)}")
        return failed

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"interval": self.interval, "restarts": self.restarts, "samples": self.samples}))


def trend(points: list[tuple[float, float]]) -> tuple[float, float]:
    """The least-squares line's change over ``points``' span, and their mean."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else 0.0
    return slope * (points[-1][0] - points[0][0]), mean_v

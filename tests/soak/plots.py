"""The soak's figures (matplotlib, the test extra): memory and keys over the run, and connection
attempts per second, as PNG files for docs/soak.rst.

``python -m tests.soak.plots RUN_DIRECTORY OUTPUT_DIRECTORY`` draws them again from a run's
``samples.json`` and ``result.json`` (a run in the background, say).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def draw(
    samples: list[dict[str, Any]], restarts: dict[str, float], total: dict[str, Any], started: float,
    directory: Path, duration: float, name: str = "soak",
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    minutes = [s["t"] / 60 for s in samples]
    label = f"{duration / 60:.0f} min"
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    rss = axes[0][0]
    for process in sorted({p for s in samples for p in s["rss_mb"]}):
        points = [(s["t"] / 60, s["rss_mb"][process]) for s in samples if process in s["rss_mb"]]
        rss.plot([t for t, _ in points], [v for _, v in points], label=process)
    rss.set_title("RSS per process (MB; a worker with its pool)")
    rss.set_ylim(bottom=0)
    rss.legend(fontsize=7, ncol=2)
    redis = axes[0][1]
    redis.plot(minutes, [s["layer_used_memory"] / 2**20 for s in samples], label="channel layer")
    if all("layer_clients_memory" in s for s in samples):
        redis.plot(minutes, [(s["layer_used_memory"] - s["layer_clients_memory"]) / 2**20 for s in samples],
                   label="channel layer, without client buffers")
    redis.plot(minutes, [s["broker_used_memory"] / 2**20 for s in samples], label="broker")
    redis.set_title("Redis used_memory (MiB)")
    redis.set_ylim(bottom=0)
    redis.legend(fontsize=7)
    counts = axes[1][0]
    for key, text in (("layer_keys", "layer keys"), ("broker_keys", "broker keys"), ("groups", "groups (pub/sub channels)"),
                      ("subscriptions", "subscriptions"), ("outbox", "outbox backlog"),
                      ("broker_queue", "tasks waiting for a worker")):
        if all(key in s for s in samples):  # (a series a run did not sample is left out)
            counts.plot(minutes, [s[key] for s in samples], label=text)
    counts.set_title("Keys, groups, subscriptions, outbox")
    counts.set_ylim(bottom=0)
    counts.legend(fontsize=7)
    counts.set_xlabel("minutes")
    histories = axes[1][1]
    histories.plot(minutes, [s["history_entries"] for s in samples])
    histories.set_title("History entries (all streams)")
    histories.set_ylim(bottom=0)
    histories.set_xlabel("minutes")
    for axis in (rss, redis, counts, histories):
        for process, at in restarts.items():
            axis.axvline(at / 60, color="grey", linestyle=":", linewidth=1)
            axis.text(at / 60, axis.get_ylim()[1] * 0.02, f" {process} restarted", fontsize=6, rotation=90, color="grey")
    figure.suptitle(f"Soak, {label}: memory and keys every {samples[1]['t'] - samples[0]['t']:.0f} s" if len(samples) > 1 else "Soak")
    figure.tight_layout()
    memory = directory / f"{name}-{int(duration)}s-memory.png"
    figure.savefig(memory, dpi=80)
    plt.close(figure)

    attempts = attempts_per_second(total.get("attempts", []), started)
    figure, axis = plt.subplots(figsize=(11, 3))
    axis.bar([t / 60 for t in attempts], list(attempts.values()), width=1 / 60)
    axis.set_title(f"Connection attempts per second (reconnections after churn, resets and restarts), {label}")
    axis.set_xlabel("minutes")
    figure.tight_layout()
    connections = directory / f"{name}-{int(duration)}s-attempts.png"
    figure.savefig(connections, dpi=80)
    plt.close(figure)
    return [memory, connections]


def attempts_per_second(attempts: list[float], started: float) -> dict[int, int]:
    """Connection attempts (``time.monotonic()`` values) counted per whole second since ``started``."""
    per_second: dict[int, int] = {}
    for at in attempts:
        second = int(at - started)
        per_second[second] = per_second.get(second, 0) + 1
    return dict(sorted(per_second.items()))


def draw_storm(total: dict[str, Any], killed_at: float, directory: Path, pages: int) -> Path:
    """Connection attempts per second after the kill, and the reconnection times' distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    tenths: dict[float, int] = {}
    for at in total.get("attempts", []):
        tenth = int((at - killed_at) * 10) / 10
        tenths[tenth] = tenths.get(tenth, 0) + 10  # per second
    figure, (attempts, spread) = plt.subplots(1, 2, figsize=(11, 3.5))
    attempts.bar(list(tenths), list(tenths.values()), width=0.09, align="edge")
    attempts.set_title(f"Connection attempts per second (0.1 s bins) after the kill ({pages} pages)")
    attempts.set_xlabel("seconds after the web process was killed")
    reconnects = sorted(total.get("reconnects", []))
    spread.plot(reconnects, [(n + 1) / len(reconnects) for n in range(len(reconnects))])
    spread.axvline(2.0, color="grey", linestyle=":", linewidth=1)
    spread.set_title("Pages back (subscribed again), cumulative")
    spread.set_xlabel("seconds from the socket closing")
    spread.set_ylim(0, 1.02)
    figure.tight_layout()
    path = directory / f"storm-{pages}-pages.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main() -> None:
    run, output = Path(sys.argv[1]), Path(sys.argv[2])
    sampled = json.loads((run / "samples.json").read_text())
    result = json.loads((run / "result.json").read_text())
    attempts = result["total"].get("attempts", [])
    started = result.get("started", min(attempts, default=0.0))
    duration = result.get("duration", max((s["t"] for s in sampled["samples"]), default=0.0))
    for path in draw(sampled["samples"], sampled["restarts"], result["total"], started, output, duration):
        print(path)


if __name__ == "__main__":
    main()

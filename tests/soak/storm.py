"""Reconnection at scale (issue 23, item 4; ``make soak-storm``, docs/soak.rst): ``PAGES`` pages on
one web process, which is killed (SIGKILL) while the writer makes changes; the load balancer
(the pages' list of web processes) sends them to the two others.

Prints the reconnections' p50 / p95 (goal: p95 within ``GOAL_S``), the refreshes (goal: none, the
missed frames being inside the history), the silent-gap and database checks of the soak, and the
connection attempts per second (the client's backoff with jitter at work); ``--plots`` draws them.
Exit status 1 when a check fails (the p95 goal is printed, not enforced: it measures this
machine's load as much as turbo_async, see docs/soak.rst).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.soak.run import RUNS, Soak, merge, percentile, report

PAGES = 2000
GOAL_S = 2.0
RATE = 20.0
BEFORE_S = 15.0
AFTER_S = 25.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=PAGES)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--layer", default=os.environ.get("TURBO_TEST_LAYER", "pubsub"))
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args()
    directory = RUNS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-storm-{args.pages}"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"storm: {args.pages} pages on one web process, killed {BEFORE_S:.0f} s in, {RATE:.0f} changes/s; "
          f"logs in {directory}", flush=True)
    soak = Soak(directory, args.layer, args.clients, args.pages)
    try:
        rooms = soak.start()
        killed, others = soak.webs[0], soak.webs[1:]
        soak.start_clients(rooms, first_url=killed.ws_url, urls=[web.ws_url for web in others],
                           churn_per_minute=0, drop_fraction=0)
        soak.start_writer(rooms, RATE)
        time.sleep(BEFORE_S)
        killed_at = time.monotonic()
        killed.kill()
        time.sleep(AFTER_S)
        (soak.control / "calm").touch()
        writer = soak.stop_writer()
        soak.wait_drained()
        results = soak.results(180)
    finally:
        soak.stop()
    total = merge(results)
    failed = report(total, writer, [f"{killed.name} killed (SIGKILL) with {args.pages} pages on it"], BEFORE_S + AFTER_S)
    reconnects = total["reconnects"]
    p95 = percentile(reconnects, 0.95)
    from tests.soak.plots import attempts_per_second

    per_second = attempts_per_second(total["attempts"], killed_at)
    print(f"\nstorm: {len(reconnects)} reconnections of {args.pages} pages: p50 {percentile(reconnects, 0.5):.2f} s, "
          f"p95 {p95:.2f} s (goal {GOAL_S} s: {'met' if p95 <= GOAL_S else 'missed'}), max {max(reconnects, default=0):.2f} s; "
          f"refreshes: {sum(total['refreshes'].values())} (goal 0)")
    handshakes = total.get("handshakes", [])
    print(f"of which the WebSocket handshake (connect to open socket): p50 {percentile(handshakes, 0.5):.2f} s, "
          f"p95 {percentile(handshakes, 0.95):.2f} s")
    print(f"connection attempts per second after the kill: {per_second}")
    if len(reconnects) < args.pages:
        failed.append(f"only {len(reconnects)} of {args.pages} pages reconnected")
    if total["refreshes"]:
        failed.append("refreshes")
    (directory / "result.json").write_text(json.dumps({"total": total, "writer": writer, "killed_at": killed_at}))
    if args.plots is not None:
        from tests.soak import plots

        plots.draw_storm(total, killed_at, args.plots, args.pages)
    print(f"storm: {'FAILED: ' + ', '.join(failed) if failed else 'every check passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

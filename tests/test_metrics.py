"""turbo_async.metrics in this process: off by default, the settings it reads, the ASGI
exposition, and the figures the status record computes. What a real Prometheus scrapes from real
processes is tests/integration/test_metrics.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.exceptions import ImproperlyConfigured

from turbo_async import conf, metrics
from turbo_async.routing import with_metrics


def value(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


@pytest.fixture
def metrics_on(settings: Any) -> None:
    settings.TURBO_ASYNC = {"METRICS": True, "STATUS_INTERVAL": 0}


async def django_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"django"})


async def get(path: str) -> tuple[int, bytes]:
    communicator = ApplicationCommunicator(
        with_metrics(django_app), {"type": "http", "method": "GET", "path": path, "headers": []}
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    body = await communicator.receive_output(5)
    return start["status"], body["body"]


def test_off_by_default() -> None:
    assert conf.get().METRICS is False
    assert metrics.active() is None
    assert metrics.headers() == {}
    assert metrics.stamped({"type": "turbo.stream"}) == {"type": "turbo.stream"}


async def test_metrics_path_goes_to_django_while_metrics_are_off() -> None:
    assert await get("/metrics") == (404, b"django")


async def test_metrics_path_serves_the_metrics_when_on(metrics_on: None) -> None:
    metrics.frame_sent(10, None)
    status, body = await get("/metrics")
    assert status == 200
    assert b"# TYPE turbo_async_frames_sent_total counter" in body
    assert await get("/other") == (404, b"django")


async def test_metrics_path_is_configurable(settings: Any) -> None:
    settings.TURBO_ASYNC = {"METRICS": True, "METRICS_PATH": "/internal/metrics", "STATUS_INTERVAL": 0}
    assert (await get("/internal/metrics"))[0] == 200
    assert await get("/metrics") == (404, b"django")


def test_metrics_path_must_start_with_a_slash() -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        conf.load({"METRICS_PATH": "metrics"})
    assert str(error.value) == "TURBO_ASYNC['METRICS_PATH'] must start with '/', like '/metrics', not 'metrics'."


def test_metrics_port_must_be_a_port() -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        conf.load({"METRICS_PORT": 70000})
    assert str(error.value) == "TURBO_ASYNC['METRICS_PORT'] must be a port number (1 to 65535), not 70000."


def test_frames_and_lag_are_counted_once_flushed(metrics_on: None) -> None:
    m = metrics.active()
    assert m is not None
    metrics.flush(m)
    frames, lags = value("turbo_async_frames_sent_total"), value("turbo_async_broadcast_lag_seconds_count")
    in_5ms, in_2ms = (value("turbo_async_broadcast_lag_seconds_bucket", le=le) for le in ("0.005", "0.0025"))
    metrics.frame_sent(100, time.time() - 0.004)  # a commit 4 ms ago: observed in the 5 ms bucket
    metrics.frame_sent(100, None)  # no commit time travelled with the frame: not observed
    assert value("turbo_async_frames_sent_total") == frames  # not yet: the hot path only adds up
    metrics.flush(m)
    assert value("turbo_async_frames_sent_total") == frames + 2
    assert value("turbo_async_bytes_sent_total") >= 200
    # prometheus_client's Histogram internals (metrics.flush): the observation lands as observe() would put it.
    assert value("turbo_async_broadcast_lag_seconds_count") == lags + 1
    assert value("turbo_async_broadcast_lag_seconds_bucket", le="0.005") == in_5ms + 1
    assert value("turbo_async_broadcast_lag_seconds_bucket", le="0.0025") == in_2ms
    assert value("turbo_async_broadcast_lag_seconds_sum") >= 0.004


def test_a_commit_time_ahead_of_this_clock_is_observed_as_no_lag(metrics_on: None) -> None:
    """A committing host whose clock is ahead of the web host's (docs/monitoring.rst, clock skew):
    the frame is observed in the first bucket and adds nothing to the sum."""
    m = metrics.active()
    assert m is not None
    metrics.flush(m)
    lags, first = value("turbo_async_broadcast_lag_seconds_count"), value("turbo_async_broadcast_lag_seconds_bucket", le="0.001")
    total = value("turbo_async_broadcast_lag_seconds_sum")
    metrics.frame_sent(100, time.time() + 5.0)
    metrics.flush(m)
    assert value("turbo_async_broadcast_lag_seconds_count") == lags + 1
    assert value("turbo_async_broadcast_lag_seconds_bucket", le="0.001") == first + 1
    assert value("turbo_async_broadcast_lag_seconds_sum") == total


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("the stream's offsets are gone (Redis flushed or restarted)", "offsets_gone"),
        ("the stream's epoch changed (its offsets were reset)", "epoch_changed"),
        ("120 publications missed; the history keeps 100", "too_far_behind"),
        ("the missed frames are no longer in the history (trimmed or too old)", "trimmed"),
        ("the history cannot be read now", "history_unreadable"),
    ],
)
def test_each_reset_of_the_history_has_its_reason(metrics_on: None, text: str, label: str) -> None:
    before = value("turbo_async_resets_total", reason=label)
    metrics.reset_sent(text)
    assert value("turbo_async_resets_total", reason=label) == before + 1


def test_quantile_interpolates_within_a_bucket_as_prometheus_does() -> None:
    # 10 observations: 5 up to 1 ms, 5 more up to 2.5 ms.
    cumulative = [5.0, 10.0] + [10.0] * (len(metrics.LAG_BUCKETS) - 1)
    assert metrics.quantile(0.5, cumulative) == 0.001
    assert metrics.quantile(0.9, cumulative) == pytest.approx(0.001 + 0.0015 * 4 / 5)
    assert metrics.quantile(0.5, [0.0] * (len(metrics.LAG_BUCKETS) + 1)) is None


def metric_names() -> set[str]:
    """Every series name turbo_async's metrics expose (``_total``, ``_bucket``, ... included)."""
    from prometheus_client import REGISTRY

    return {
        sample.name
        for family in REGISTRY.collect() if family.name.startswith("turbo_async_")
        for sample in family.samples
    } | {
        # labelled counters and histograms have no sample until a label or an observation exists
        f"{family.name}{suffix}"
        for family in REGISTRY.collect() if family.name.startswith("turbo_async_")
        for suffix in ("_total", "_bucket", "_sum", "_count")
    }


def test_the_dashboard_and_the_alerts_use_only_metrics_that_exist(metrics_on: None) -> None:
    import json
    import re

    from tests.services import ROOT

    assert metrics.active() is not None
    known = metric_names()
    dashboard = json.loads((ROOT / "docs" / "grafana" / "turbo_async.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    alerts = (ROOT / "docs" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"turbo_async_\w+", " ".join(expressions) + alerts))
    assert used - known == set()
    assert len(used) >= 15


def wait_for(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_outbox_counts_what_waits_for_a_dead_broker_and_what_it_drops(
    settings: Any, transactional_db: None
) -> None:
    """This process's real outbox thread against a broker port nothing listens on."""
    from tests.services import free_port, use_broker
    from tests.testapp.factories import DocumentFactory
    from workers import app

    settings.TURBO_ASYNC = {
        "METRICS": True, "STATUS_INTERVAL": 0, "OUTBOX_MAX_AGE": 1.0, "OUTBOX_RETRY_BACKOFF_MAX": 0.2,
    }
    failures = value("turbo_async_publish_failures_total")
    dropped = value("turbo_async_dropped_total", reason="max_age")
    previous = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{free_port()}/0")
    app.conf.task_always_eager = False
    try:
        DocumentFactory()
        wait_for(
            lambda: value("turbo_async_outbox_waiting") == 1 and value("turbo_async_publish_failures_total") > failures,
            "the change waits and the failed publish is counted",
        )
        wait_for(lambda: value("turbo_async_outbox_oldest_age_seconds") > 0, "the oldest change ages")
        wait_for(
            lambda: value("turbo_async_dropped_total", reason="max_age") == dropped + 1,
            "dropped after OUTBOX_MAX_AGE",
        )
        wait_for(lambda: value("turbo_async_outbox_waiting") == 0, "nothing waits any more")
    finally:
        app.conf.task_always_eager = True
        use_broker(previous)


def test_metrics_without_prometheus_client_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what importing it does when it is absent
    with pytest.raises(ImproperlyConfigured) as error:
        conf.load({"METRICS": True})
    assert str(error.value) == (
        "TURBO_ASYNC['METRICS'] is on but prometheus_client is not installed: pip install \"turbo-async[metrics]\"."
    )


async def test_a_layer_without_the_internals_placement_reads_leaves_the_status_off_not_the_metrics(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real pub/sub layer object without the constructor arguments placement reads (a newer
    channels_redis): the reporter logs an ERROR, writes no status, and keeps flushing the counts."""
    import asyncio

    from channels_redis.pubsub import RedisPubSubChannelLayer

    settings.TURBO_ASYNC = {"METRICS": True, "STATUS_INTERVAL": 1}
    layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"])
    del layer.__dict__["_kwargs"]
    monkeypatch.setattr(metrics, "get_channel_layer", lambda: layer)
    flushed: list[int] = []
    monkeypatch.setattr(metrics, "flush", lambda m: flushed.append(1))
    m = metrics.active()
    assert m is not None
    reporter = asyncio.create_task(metrics._report(m))
    await asyncio.sleep(0.1)
    assert not reporter.done(), reporter
    reporter.cancel()
    assert flushed
    assert "this process's status is not reported to Redis" in caplog.text
    assert any(record.levelname == "ERROR" for record in caplog.records)

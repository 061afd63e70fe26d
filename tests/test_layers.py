"""turbo_async.layers: what counts as a layer error, the backoff, the drop counter, and a pin for
every channels_redis internal turbo_async relies on (here, in turbo_async.placement and in
turbo_async.history), so that a channels_redis upgrade that moves one fails this file by name."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from channels_redis import core, pubsub, utils

from turbo_async import layers


def test_asyncio_timeouts_count_as_layer_errors() -> None:
    # asyncio.wait_for raises asyncio.TimeoutError, which is TimeoutError only from Python 3.11.
    assert issubclass(asyncio.TimeoutError, layers.LAYER_ERRORS)


def test_the_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = layers.Backoff(0.1, 0.5)
    waits = [backoff.next() for _ in range(5)]
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2 and 0.2 <= waits[2] <= 0.4
    assert all(0.25 <= wait <= 0.5 for wait in waits[3:])
    backoff.reset()
    assert backoff.delay == 0.1


def test_the_drop_counter_reads_channels_redis_over_capacity_records_of_this_send_only() -> None:
    log = logging.getLogger(layers.CHANNELS_REDIS_LOGGER)
    layers.DropCounter.install()
    assert log.isEnabledFor(logging.INFO)
    outside = log.makeRecord(log.name, logging.INFO, __file__, 1, layers.OVER_CAPACITY, (3, 5, "g"), None)
    for f in log.filters:
        f.filter(outside)  # no send running: nothing counted, nothing raised
    with layers.counting_drops() as drops:
        log.info(layers.OVER_CAPACITY, 2, 4, "g")
        log.info("something else %s", 1)
    assert drops == [2]


# -- channels_redis internals, pinned --------------------------------------------------------------


def test_core_layer_internals() -> None:
    """RedisChannelLayer: ``consistent_hash`` and ``hosts`` (placement), ``connection(index)``
    (history), ``receive_buffer`` (forget), its over-capacity log message (DropCounter)."""
    layer = core.RedisChannelLayer(hosts=["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"])
    assert layer.consistent_hash("g") in (0, 1) and len(layer.hosts) == 2
    assert callable(layer.connection) and isinstance(layer.receive_buffer, dict)
    assert layers.OVER_CAPACITY in inspect.getsource(core.RedisChannelLayer.group_send)
    assert layers.CHANNELS_REDIS_LOGGER == core.logger.name


def test_pubsub_layer_internals() -> None:
    """RedisPubSubChannelLayer: the proxy keeps ``_args``/``_kwargs`` (placement) and makes a
    per-loop layer with ``_get_layer()``, whose ``channels``, ``prefix``, ``_get_shard`` and
    ``_subscribe_to_channel`` new_channel and forget use; its group channel is
    ``prefix + "__group__" + group`` placed by ``_consistent_hash`` (placement)."""
    layer = pubsub.RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"], prefix="p")
    assert layer._kwargs["hosts"] == ["redis://127.0.0.1:1/0"] and layer._args == ()

    async def inner() -> None:
        loop_layer = layer._get_layer()
        assert isinstance(loop_layer.channels, dict) and loop_layer.prefix == "p"
        assert callable(loop_layer._get_shard) and callable(loop_layer._subscribe_to_channel)
        assert loop_layer._get_group_channel_name("g") == "p__group__g"

    asyncio.run(inner())
    assert utils._consistent_hash("x", 1) == 0 and callable(utils.create_pool) and callable(utils.decode_hosts)
    assert pubsub.logger.name == layers.PUBSUB_LOGGER


@pytest.mark.parametrize("count", [2, 3, 5])
def test_consistent_hash_is_the_ring_both_layers_use(count: int) -> None:
    hosts = [f"redis://127.0.0.1:{n + 1}/0" for n in range(count)]
    layer = core.RedisChannelLayer(hosts=hosts)
    for n in range(50):
        assert layer.consistent_hash(f"g{n}") == utils._consistent_hash(f"g{n}", count)

"""``turbo_async.broker``: what the checks, the management command and the refreshes read of the
Celery app's broker. Apps are real Celery apps, not current, configured per test; clients talk to
the session's real Redis server (Sentinel: tests/integration/test_sentinel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from kombu import Queue

from tests.services import RedisServer, free_port
from turbo_async import broker


def app_with(url: object = None, **conf: object) -> Celery:
    app = Celery("proj", set_as_current=False)
    app.conf.broker_url = url
    for key, value in conf.items():
        setattr(app.conf, key, value)
    return app


def test_an_unset_broker_is_celerys_default() -> None:
    assert broker.broker_urls(app_with(None)) == ["amqp://guest@localhost//"]
    assert broker.broker_url(app_with(None)) == "amqp://guest@localhost//"


def test_a_failover_list_is_every_url_with_its_password_and_shown_without() -> None:
    app = app_with("redis://:s3cret@a:6379/0; redis://b:6379/0")
    assert broker.broker_urls(app) == ["redis://:s3cret@a:6379/0", "redis://b:6379/0"]
    assert broker.broker_url(app) == "redis://a:6379/0; redis://b:6379/0"


def test_a_list_of_urls_is_a_failover_list() -> None:
    app = app_with(["sentinel://s1:26379", "sentinel://s2:26379"])
    assert broker.broker_urls(app) == ["sentinel://s1:26379", "sentinel://s2:26379"]


def test_the_write_url_wins() -> None:
    app = app_with("amqp://read//", broker_write_url="redis://write:6379/0")
    assert broker.broker_urls(app) == ["redis://write:6379/0"]
    assert broker.broker_is_redis(app)


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6379/0",
        "rediss://r:6380/0",
        "REDIS://r:6379/0",
        "redis+socket:///run/redis.sock",
        "sentinel://s1:26379;sentinel://s2:26379",
        "sentinel://s1:26379;amqp://elsewhere//",  # the first URL decides
    ],
)
def test_redis_brokers(url: str) -> None:
    assert broker.broker_is_redis(app_with(url))


@pytest.mark.parametrize("url", ["amqp://guest@r//", "pyamqp://r//", "sqs://", "redis-but-not://x", "amqp://x//;redis://y"])
def test_brokers_that_are_not_redis(url: str) -> None:
    assert not broker.broker_is_redis(app_with(url))


def test_broker_transport_decides_over_the_url() -> None:
    assert broker.broker_is_redis(app_with("amqp://x//", broker_transport="redis"))
    assert not broker.broker_is_redis(app_with("redis://x:6379/0", broker_transport="amqp"))
    assert broker.broker_is_sentinel(app_with("redis://x:6379/0", broker_transport="sentinel"))


def test_only_sentinel_urls_are_sentinel() -> None:
    assert broker.broker_is_sentinel(app_with("sentinel://s1:26379;sentinel://s2"))
    assert not broker.broker_is_sentinel(app_with("redis://r:6379/0"))


def test_a_redis_client_of_a_redis_broker(redis_server: RedisServer) -> None:
    client = broker.redis_client(app_with(redis_server.url), socket_timeout=2)
    assert client.ping()
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 2


def test_a_redis_client_uses_the_first_url_of_a_failover_list(redis_server: RedisServer) -> None:
    client = broker.redis_client(app_with(f"{redis_server.url};redis://127.0.0.1:1/0"))
    assert client.ping()


def test_a_redis_client_of_a_unix_socket_broker(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(free_port(), tmp_path, "--unixsocket", str(socket_path), "--databases", "4")
    server.start()
    try:
        client = broker.redis_client(app_with(f"redis+socket://{socket_path}?virtual_host=3"))
        client.set("turbo_async:test", "via the socket")
        assert redis_db(server, 3).get("turbo_async:test") == b"via the socket"
    finally:
        server.stop()


def redis_db(server: RedisServer, db: int) -> object:
    import redis

    return redis.Redis(port=server.port, db=db)


def test_a_sentinel_client_names_the_master_and_asks_every_sentinel() -> None:
    app = app_with(
        "sentinel://:pw@127.0.0.1:1/2;sentinel://127.0.0.1:2;sentinel://127.0.0.1",
        broker_transport_options={"master_name": "turbo", "sentinel_kwargs": {"password": "sentinels"}},
    )
    client = broker.redis_client(app, socket_timeout=2)
    pool = client.connection_pool
    assert pool.service_name == "turbo"
    assert [c.connection_pool.connection_kwargs["port"] for c in pool.sentinel_manager.sentinels] == [1, 2, 26379]
    # sentinel_kwargs go to the sentinels, not to the master.
    assert {c.connection_pool.connection_kwargs["password"] for c in pool.sentinel_manager.sentinels} == {"sentinels"}
    # The master's own connections: the first URL's password and database, and our options.
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["socket_timeout"] == 2


def test_a_sentinel_broker_without_a_master_name_fails_saying_what_to_set() -> None:
    app = app_with("sentinel://:pw@s1:26379;sentinel://s2:26379", broker_transport_options={})
    with pytest.raises(ValueError) as raised:
        broker.redis_client(app)
    assert str(raised.value) == (
        "The Celery broker sentinel://s1:26379;sentinel://s2:26379 is Redis Sentinel, but "
        "CELERY_BROKER_TRANSPORT_OPTIONS has no \"master_name\": set it to the name the sentinels "
        "monitor the master by (\"sentinel monitor <master-name> ...\"), e.g. {\"master_name\": \"mymaster\"}."
    )


def test_no_redis_client_for_another_broker() -> None:
    with pytest.raises(ValueError, match=r"^The Celery broker amqp://u@rabbit// is not Redis; only redis://"):
        broker.redis_client(app_with("amqp://u:pw@rabbit//"))


def test_a_database_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match=r"must be a number \(redis://host:6379/0\), not 'x'"):
        broker.redis_client(app_with("sentinel://s1/x", broker_transport_options={"master_name": "m"}))


# -- countdowns --------------------------------------------------------------------------------


def test_quorum_queues_on_rabbitmq_delay_natively() -> None:
    assert broker.native_delayed_delivery(app_with("amqp://r//", task_default_queue_type="quorum"))
    assert broker.native_delayed_delivery(app_with("pyamqp://r//", task_create_missing_queue_type="quorum"))
    queues = [Queue("turbo", queue_arguments={"x-queue-type": "quorum"})]
    assert broker.native_delayed_delivery(app_with("amqp://r//", task_queues=queues))


def test_classic_queues_and_redis_do_not() -> None:
    assert not broker.native_delayed_delivery(app_with("amqp://r//"))
    assert not broker.native_delayed_delivery(app_with("redis://r:6379/0", task_default_queue_type="quorum"))


def test_a_countdown_is_whole_seconds_up_with_native_delayed_delivery() -> None:
    quorum = app_with("amqp://r//", task_default_queue_type="quorum")
    assert broker.countdown(quorum, 0.3) == 1.0
    assert broker.countdown(quorum, 1.0) == 1.0
    assert broker.countdown(quorum, 1.2) == 2.0
    assert broker.countdown(quorum, 0) == 0.0
    assert broker.countdown(quorum, -1) == 0.0


def test_a_countdown_is_kept_elsewhere() -> None:
    assert broker.countdown(app_with("redis://r:6379/0"), 0.3) == 0.3
    assert broker.countdown(app_with("amqp://r//"), 0.3) == 0.3
    assert broker.countdown(app_with("redis://r:6379/0"), -2) == 0.0

"""The fan-out's own state (:mod:`turbo_async.fanout`); its behaviour with real processes is in
tests/integration/test_fanout.py."""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer

from turbo_async import history
from turbo_async.fanout import FanOut
from turbo_async.protocol import MESSAGE_TYPE


def frame(offset: int, epoch: str = "e1") -> dict[str, Any]:
    return {"type": MESSAGE_TYPE, "group": "g", "data": f"<f{offset}/>", "epoch": epoch, "offset": offset}


def test_a_publication_that_arrives_after_a_later_one_does_not_move_the_received_position_back() -> None:
    """Two workers number their publications and send them in two steps, so publication 5 may reach the
    process after publication 6 (the soak saw it, tests/soak). The process has 6: its upkeep's audit
    compares the stream's position with this one, and would hand 6 to every socket again."""
    fan_out = FanOut(InMemoryChannelLayer())
    for offset in (6, 5):
        fan_out.note(frame(offset))
    assert fan_out.received["g"] == history.Position("e1", 6)


def test_a_new_epoch_is_received_whatever_its_offset() -> None:
    fan_out = FanOut(InMemoryChannelLayer())
    fan_out.note(frame(40))
    fan_out.note(frame(1, epoch="e2"))
    assert fan_out.received["g"] == history.Position("e2", 1)


async def test_a_socket_does_not_share_a_history_read_that_began_before_it_joined(monkeypatch: Any) -> None:
    """Pages of one stream coming back together share one read of the history. A socket that
    joined the group after that read began must not take its answer: a publication sent between the read
    and the join would reach it neither way (the soak's reconnection storm saw two pages refresh
    on that gap). It gets a read of its own, which the sockets after it share."""
    import asyncio

    from turbo_async import fanout

    reads: list[asyncio.Event] = []

    async def since(layer: Any, group: str, seen: history.Position) -> history.Replay:
        release = asyncio.Event()
        reads.append(release)
        number = len(reads)
        await release.wait()
        return history.Replay(history.Position("e1", 9), [(9, f"<read{number}/>")])

    monkeypatch.setattr(history, "since", since)
    loop = asyncio.get_running_loop()
    seen = history.Position("e1", 8)
    first = asyncio.ensure_future(fanout.shared_since(None, "g", seen, joined=loop.time()))
    await asyncio.sleep(0)
    joined_before = asyncio.ensure_future(fanout.shared_since(None, "g", seen, joined=loop.time() - 60))
    await asyncio.sleep(0.01)
    joined_after = asyncio.ensure_future(fanout.shared_since(None, "g", seen, joined=loop.time()))
    later = asyncio.ensure_future(fanout.shared_since(None, "g", seen, joined=loop.time() - 0.001))
    await asyncio.sleep(0.01)
    assert len(reads) == 2
    for release in reads:
        release.set()
    answers = [(await f).frames[0][1] for f in (first, joined_before, joined_after, later)]
    assert answers == ["<read1/>", "<read1/>", "<read2/>", "<read2/>"]


class SlowJoinLayer:
    """A layer whose ``group_add`` waits until the test lets it through (or fails it)."""

    def __init__(self) -> None:
        import asyncio

        self.through = asyncio.Event()
        self.fail = False
        self.adds = 0

    async def new_channel(self) -> str:
        return "process!1"

    async def receive(self, channel: str) -> dict[str, Any]:
        import asyncio

        await asyncio.Event().wait()  # nothing comes
        raise AssertionError

    async def group_add(self, group: str, channel: str) -> None:
        self.adds += 1
        await self.through.wait()
        if self.fail:
            self.fail = False
            raise RuntimeError("the layer failed this join")

    async def group_discard(self, group: str, channel: str) -> None:
        pass


class Socket:
    def push(self, message: dict[str, Any]) -> None:
        pass


async def test_a_second_socket_waits_for_the_first_ones_join_before_reading_the_history() -> None:
    """The group's second socket skips the Redis round trip, but not the first socket's join still
    under way: it reads the history next, and a publication sent before the process is in the group
    would reach it neither from the history nor live (the soak's storm: pages refreshed on gaps)."""
    import asyncio

    layer = SlowJoinLayer()
    fan_out = FanOut(layer)
    first = asyncio.ensure_future(fan_out.join("g", Socket()))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(fan_out.join("g", Socket()))
    await asyncio.sleep(0.01)
    assert not second.done()
    layer.through.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert layer.adds == 1  # one round trip for the process
    for task in (fan_out.reader, fan_out.keeper):
        if task is not None:
            task.cancel()


async def test_a_second_socket_joins_itself_when_the_first_ones_join_failed() -> None:
    import asyncio

    import pytest

    layer = SlowJoinLayer()
    layer.fail = True
    fan_out = FanOut(layer)
    first = asyncio.ensure_future(fan_out.join("g", Socket()))
    await asyncio.sleep(0.01)
    second_socket = Socket()
    second = asyncio.ensure_future(fan_out.join("g", second_socket))
    await asyncio.sleep(0.01)
    layer.through.set()
    with pytest.raises(RuntimeError):
        await first
    await asyncio.wait_for(second, 5)
    assert layer.adds == 2
    assert fan_out.members["g"] == {second_socket}
    for task in (fan_out.reader, fan_out.keeper):
        if task is not None:
            task.cancel()


# -- start_now: the fan-out's writes without a task per socket -------------------------------


async def test_a_write_that_does_not_wait_finishes_in_the_callers_step_without_a_task() -> None:
    """What the fan-out does for each socket whose transport takes the frame at once: the write is
    done when ``start_now`` returns, and no task was made for it (a fifth of a web process's time
    in the 10,000-subscriber room was one task per socket and frame)."""
    import asyncio

    from turbo_async.fanout import start_now

    written: list[int] = []
    already = asyncio.get_running_loop().create_future()
    already.set_result(None)

    async def write(n: int) -> None:
        await already  # a done future does not suspend (a transport with room in its buffer)
        written.append(n)

    tasks_before = len(asyncio.all_tasks())
    assert [start_now(write(n)) for n in range(3)] == [None, None, None]
    assert written == [0, 1, 2]
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_write_that_waits_goes_on_in_its_own_task_with_what_it_waited_for() -> None:
    """A slow socket's send waits (its buffer is full): the caller gets a task at once and goes on
    to the next socket; the task hands the write the values and errors of what it waits for, in
    the order they come, as ``await`` would."""
    import asyncio

    from turbo_async.fanout import start_now

    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    seen: list[Any] = []

    async def write() -> None:
        seen.append(await first)
        try:
            await second
        except ValueError as exc:
            seen.append(f"caught {exc}")
        await asyncio.sleep(0)  # a bare yield
        seen.append("done")

    task = start_now(write())
    assert task is not None and not task.done()
    assert seen == []
    first.set_result("drained")
    await asyncio.sleep(0)
    second.set_exception(ValueError("reset by peer"))
    await asyncio.wait_for(task, 5)
    assert seen == ["drained", "caught reset by peer", "done"]


async def test_a_waiting_write_is_cancelled_like_a_task_and_cleans_up() -> None:
    """A socket that closes cancels its writer: the cancellation reaches the write where it waits
    (its ``finally`` runs) and the task ends cancelled."""
    import asyncio

    import pytest

    from turbo_async.fanout import start_now

    cleaned: list[str] = []

    async def write() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never done
        finally:
            cleaned.append("finally")

    task = start_now(write())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]


async def test_an_error_of_a_waiting_write_ends_its_task_with_it() -> None:
    import asyncio

    import pytest

    from turbo_async.fanout import start_now

    gate = asyncio.get_running_loop().create_future()

    async def write() -> None:
        await gate
        raise OSError("the client went away")

    task = start_now(write())
    assert task is not None
    gate.set_result(None)
    with pytest.raises(OSError, match="went away"):
        await asyncio.wait_for(task, 5)


async def test_a_live_copy_of_a_frame_the_upkeep_replayed_is_dropped(monkeypatch: Any) -> None:
    """On a loaded machine the process's reader can be more than two upkeeps behind: the audit
    finds the process behind its stream and replays 969-970 from the history to the group's
    sockets, and the live 969-970, still on their way, come after. The hour-long soak saw pages
    get such copies (140 duplicate arrivals, three bursts, the longest 67 frames; the client
    dropped them): the process now drops them. A later frame still goes out."""
    members: list[dict[str, Any]] = []

    class Socket:
        def push(self, message: dict[str, Any]) -> None:
            members.append(message)

    async def since(layer: Any, group: str, seen: history.Position) -> history.Replay:
        return history.Replay(history.Position("e1", 970), [(969, "<f969/>"), (970, "<f970/>")])

    monkeypatch.setattr(history, "since", since)
    fan_out = FanOut(InMemoryChannelLayer())
    fan_out.members["g"] = {Socket()}  # type: ignore[arg-type]
    fan_out.note(frame(968))
    await fan_out.catch_up("g", history.Position("e1", 968), history.Position("e1", 970))
    assert [message["offset"] for message in members] == [969, 970]
    assert [fan_out.note(frame(offset)) for offset in (969, 970, 971)] == [False, False, True]

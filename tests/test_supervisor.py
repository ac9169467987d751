"""UserStreamManager and its ComponentSupervisors: components from settings, restarts, stop."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from devtools.processes import wait_until
from livestream.components.base import Component
from livestream.components.console_logger import ConsoleLogger
from livestream.components.user_manager import UserStreamManager

CRASHES: dict[str, int] = {}


class Steady(Component):
    """Counts ticks; never fails."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)


class CrashOnce(Component):
    """Crashes on its first run for each user, then runs."""

    async def run(self) -> None:
        CRASHES[self.user_id] = CRASHES.get(self.user_id, 0) + 1
        if CRASHES[self.user_id] == 1:
            raise RuntimeError("boom")
        await asyncio.Event().wait()


class AlwaysCrash(Component):
    async def run(self) -> None:
        raise RuntimeError("always")


@pytest.fixture(autouse=True)
def fast_restarts(configure_livestream):
    configure_livestream(RESTART_BACKOFF=0.01, RESTART_BACKOFF_MAX=0.02, SHUTDOWN_TIMEOUT=0.2)
    CRASHES.clear()


async def test_components_come_from_settings(configure_livestream):
    configure_livestream(
        COMPONENTS=["Steady", "ConsoleLogger"], EXTRA_COMPONENTS={"Steady": "tests.test_supervisor.Steady"}
    )
    manager = UserStreamManager("1")
    assert [child.name for child in manager.children] == ["Steady", "ConsoleLogger"]
    manager.start()
    await wait_until(lambda: all(c.status()["state"] == "running" for c in manager.children), 2, "running")
    await manager.stop()
    assert {c.status()["state"] for c in manager.children} == {"stopped"}


async def test_default_components_are_the_console_logger_stream_state_and_alerts():
    manager = UserStreamManager("1")
    assert [c.name for c in manager.children] == [
        "ConsoleLogger",
        "StreamStateServer",
        "AlertManager",
        "CloudflareManager",
    ]
    assert manager.children[0].component_class is ConsoleLogger


async def test_stop_stops_every_component():
    manager = UserStreamManager("1", [Steady, Steady])
    manager.start()
    await wait_until(
        lambda: all(c.component and c.component.ticks > 2 for c in manager.children), 2, "ticking"
    )
    await manager.stop()
    ticks = [c.component.ticks for c in manager.children]
    await asyncio.sleep(0.05)
    assert [c.component.ticks for c in manager.children] == ticks


class LosesOneCancel(Component):
    """Acts every 20 ms while may_act(); loses its first cancellation, as Python 3.11's
    asyncio.wait_for does when its inner call finished just as the cancel landed (redis-py
    sends every command through it): the fourth 30-minute nemesis run."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.effects: list[float] = []
        self.lost = 0

    async def run(self) -> None:
        while True:
            if self.may_act():
                self.effects.append(asyncio.get_running_loop().time())
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                if self.lost:
                    raise
                self.lost += 1


async def test_a_component_that_lost_its_cancellation_stops_acting_and_is_ended(caplog):
    manager = UserStreamManager("9", [LosesOneCancel])
    manager.start()
    child = manager.children[0]
    await wait_until(lambda: child.component is not None and len(child.component.effects) > 2, 2, "acting")
    component = child.component
    task = child._task
    await manager.stop()  # SHUTDOWN_TIMEOUT 0.2 s: abandoned, then cancelled again
    stopped_at = asyncio.get_running_loop().time()
    assert component.lost == 1
    assert "[UserStreamManager:9] LosesOneCancel ignored cancellation for 0.2s; abandoned" in caplog.text
    assert not component.may_act()
    assert not [t for t in component.effects if t > stopped_at - 0.2]  # none after stop() began
    assert task is not None
    await wait_until(task.done, 2, "the abandoned run ended by a later cancel")
    assert task.cancelled()


async def test_a_crashing_component_is_restarted_without_touching_the_others(caplog):
    manager = UserStreamManager("7", [Steady, CrashOnce])
    manager.start()
    steady, crashy = manager.children
    first_steady = None
    await wait_until(lambda: steady.component is not None, 1, "steady started")
    first_steady = steady.component
    await wait_until(lambda: CRASHES.get("7") == 2 and crashy.status()["state"] == "running", 2, "restart")
    assert crashy.status()["restarts"] == 1
    assert steady.component is first_steady and steady.status()["restarts"] == 0
    assert "[UserStreamManager:7] CrashOnce crashed" in caplog.text
    await manager.stop()


async def test_restarts_are_bounded_then_the_component_is_failed(caplog, configure_livestream):
    configure_livestream(MAX_RESTARTS=3, MAX_RESTARTS_WINDOW=5.0)
    manager = UserStreamManager("8", [AlwaysCrash, Steady])
    manager.start()
    failing, steady = manager.children
    await wait_until(lambda: failing.status()["state"] == "failed", 3, "failed")
    assert failing.status()["restarts"] == 3
    assert steady.status()["state"] == "running"
    assert re.search(r"\[UserStreamManager:8\] AlwaysCrash failed: more than 3 restarts in 5.0s", caplog.text)
    await manager.stop()
    # A failed component stays visibly failed; the others stop.
    assert (failing.status()["state"], steady.status()["state"]) == ("failed", "stopped")


async def test_console_logger_counts_from_one_in_the_seed_format(caplog, configure_livestream):
    caplog.set_level(logging.INFO, logger="livestream.console")
    configure_livestream(CONSOLE_LOG_INTERVAL=0.02)
    manager = UserStreamManager("42", [ConsoleLogger])
    manager.start()
    await wait_until(lambda: manager.children[0].status().get("count", 0) >= 3, 2, "three lines")
    await manager.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "livestream.console"]
    pattern = r"\[UserStreamManager:42\] Console log #(\d+) - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z"
    numbers = [int(re.fullmatch(pattern, line).group(1)) for line in lines]
    assert numbers[:3] == [1, 2, 3]

"""dashboard/ws/admission.py: a storm of handshakes runs a few at a time, in order, and the
ones that cannot start in time are refused at once instead of timing out after the work."""

from __future__ import annotations

import asyncio

from dashboard.ws.admission import HandshakeGate


class SlowHandshakes:
    """An ASGI websocket app whose handshakes take ``work`` seconds, counting how many overlap."""

    def __init__(self, work: float) -> None:
        self.work = work
        self.running = 0
        self.most = 0
        self.accepted: list[int] = []

    async def __call__(self, scope, receive, send) -> None:
        await receive()  # websocket.connect
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(self.work)
        self.running -= 1
        self.accepted.append(scope["n"])
        await send({"type": "websocket.accept"})
        await receive()  # held open until the client goes


async def handshake(app, n: int) -> str:
    inbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    answer: asyncio.Future = asyncio.get_running_loop().create_future()

    async def send(message) -> None:
        if not answer.done():
            answer.set_result(message["type"])

    task = asyncio.ensure_future(app({"type": "websocket", "n": n}, inbox.get, send))
    result = await answer
    task.cancel()
    return result


async def test_a_storm_runs_a_few_handshakes_at_a_time_in_arrival_order(configure_livestream):
    configure_livestream(MAX_PENDING_HANDSHAKES=4, HANDSHAKE_QUEUE_WAIT=2.0)
    inner = SlowHandshakes(work=0.02)
    gate = HandshakeGate(inner)
    answers = await asyncio.gather(*(handshake(gate, n) for n in range(40)))
    assert answers == ["websocket.accept"] * 40
    assert inner.most == 4
    assert inner.accepted[:4] == sorted(inner.accepted[:4]) and inner.accepted[-1] >= 36  # served in order


async def test_a_handshake_that_cannot_start_in_time_is_refused_before_any_work(configure_livestream, caplog):
    configure_livestream(MAX_PENDING_HANDSHAKES=2, HANDSHAKE_QUEUE_WAIT=0.2)
    inner = SlowHandshakes(work=1.0)
    gate = HandshakeGate(inner)
    answers = await asyncio.gather(*(handshake(gate, n) for n in range(10)))
    assert answers.count("websocket.accept") == 2
    assert answers.count("websocket.close") == 8  # refused after 0.2 s, not after 1 s of work each
    assert inner.most == 2
    assert sum("refused" in r.getMessage() for r in caplog.records) == 1  # one line, not eight

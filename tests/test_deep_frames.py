"""Issue 20.6: a frame nested too deeply for json still gets an error reply to its id."""

from __future__ import annotations

import json
import logging

import pytest
from channels.testing import WebsocketCommunicator

from dashboard.ws.commands import MAX_DEPTH, id_of_unparsable
from tests.test_presence_consumer import communicator, next_output, session_for

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = 1_000


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_the_id_of_an_unparsable_frame_is_found_on_the_top_level_only():
    deep = nested(DEEP)
    assert id_of_unparsable(f'{{"type": "command", "args": {deep}, "id": "c1"}}') == "c1"
    assert id_of_unparsable(f'{{"id": 7, "args": {deep}}}') == 7
    assert (
        id_of_unparsable(f'{{"a": "x}}]\\"", "b": {{"id": "inner"}}, "args": {deep}, "id": "top"}}') == "top"
    )
    assert id_of_unparsable(f'{{"args": {deep}}}') is None
    assert id_of_unparsable(f'{{"args": {deep}, "id": {deep}}}') is None  # not a valid id
    assert id_of_unparsable(f'{{"args": {deep}, "id": "{"x" * 101}"}}') is None  # too long
    assert id_of_unparsable("[" * 50_000) is None
    assert id_of_unparsable('{"id" "x"') is None


async def reply(ws: WebsocketCommunicator, cid: str) -> dict:
    out = await next_output(ws, lambda o: '"reply"' in (o.get("text") or "") and cid in o["text"])
    return json.loads(out["text"])


async def test_deeply_nested_commands_get_an_error_reply(caplog):
    caplog.set_level(logging.INFO, logger="dashboard")
    _, session = await session_for("deep@example.com")
    ws = communicator(session)
    assert (await ws.connect())[0]
    command = '{{"type": "command", "component": "Echo", "command": "whoami", "args": {}, "id": "{}"}}'
    await ws.send_to(text_data=command.format(nested(DEEP), "d1"))  # json.loads: RecursionError
    got = await reply(ws, "d1")
    assert got == {"type": "reply", "id": "d1", "ok": False, "error": got["error"]}
    assert "nested too deeply" in got["error"]
    shallow = '{"a": ' * (MAX_DEPTH + 5) + "{}" + "}" * (MAX_DEPTH + 5)  # parses, but too deep to pass on
    await ws.send_to(text_data=command.format(shallow, "d2"))
    got = await reply(ws, "d2")
    assert got["ok"] is False and f"nested deeper than {MAX_DEPTH} levels" in got["error"]
    await ws.send_to(text_data=nested(DEEP))  # no id: nobody waits; ignored with a line
    await ws.send_json_to({"type": "ping"})
    assert await next_output(ws, lambda o: o.get("text") == '{"type": "pong"}')
    assert "ignored a non-JSON frame" in caplog.text
    await ws.disconnect()

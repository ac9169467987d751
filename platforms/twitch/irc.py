"""A small IRC client for Twitch chat: asyncio streams, IRCv3 tags, TLS for ircs://.

Twitch's chat is IRC (https://dev.twitch.tv/docs/chat/irc/): ``PASS oauth:<token>``,
``NICK <login>``, ``CAP REQ :twitch.tv/tags twitch.tv/commands``, ``JOIN #<channel>``;
the server sends ``PING`` (answered with ``PONG``), ``RECONNECT`` before maintenance
and ``NOTICE * :Login authentication failed`` for a bad token. A plain IRC server
(the tests' miniircd) is spoken to the same way: it NAKs the capabilities (so
messages carry no tags and the client falls back to the prefix and its own ids),
answers a wrong ``PASS`` with ``464``, and needs ``USER`` and ``CAP END`` to
finish registration, which Twitch ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

CAPABILITIES = "twitch.tv/tags twitch.tv/commands"
LOGIN_FAILURES = ("Login authentication failed", "Login unsuccessful", "Improperly formatted auth")
_LINE_BREAKS = re.compile(r"[\r\n\0]+")
_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


class LoginFailed(Exception):
    """The server refused the token: retrying with the same one cannot help."""


class Reconnect(Exception):
    """The server asked us to reconnect (Twitch's RECONNECT): do so at once."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool


def endpoint(url: str) -> Endpoint:
    """``ircs://host:port`` (TLS, default port 6697) or ``irc://host:port`` (plain TCP, 6667)."""
    parts = urlsplit(url)
    if parts.scheme not in ("irc", "ircs") or not parts.hostname:
        raise ValueError(f"not an irc:// or ircs:// URL: {url!r}")
    tls = parts.scheme == "ircs"
    return Endpoint(parts.hostname, parts.port or (6697 if tls else 6667), tls)


def unescape_tag(value: str) -> str:
    """An IRCv3 tag value (``\\s`` is a space, ``\\:`` a semicolon, ...)."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append(_TAG_ESCAPES.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


@dataclass
class Message:
    command: str
    params: list[str] = field(default_factory=list)
    prefix: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]


def parse(line: str) -> Message | None:
    """One IRC line (without CRLF) as a Message; None for an empty or malformed line."""
    line = line.rstrip("\r\n")
    tags: dict[str, str] = {}
    if line.startswith("@"):
        raw, _, line = line.partition(" ")
        for item in raw[1:].split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = unescape_tag(value)
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    line = line.lstrip(" ")
    if not line:
        return None
    head, sep, trailing = line.partition(" :")
    words = head.split()
    if not words:
        return None
    params = words[1:] + ([trailing] if sep else [])
    return Message(words[0].upper(), params, prefix, tags)


def clean_text(text: str) -> str:
    """A line safe to send: no CR/LF (they would end the line and start another command)."""
    return _LINE_BREAKS.sub(" ", text).strip()


class IrcConnection:
    """One connection: ``open`` registers and joins, then ``read`` / ``send``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nick: str, channel: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.nick = nick
        self.channel = channel  # with the '#'
        self.tags = False  # the server ACKed twitch.tv/tags

    @classmethod
    async def open(
        cls, url: str, login: str, token: str, channel: str, timeout: float = 10.0
    ) -> IrcConnection:
        """Connect, log in, join ``channel``; LoginFailed when the token is refused,
        OSError / TimeoutError / ConnectionError for anything else."""
        where = endpoint(url)
        context = ssl.create_default_context() if where.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                where.host, where.port, ssl=context, server_hostname=where.host if where.tls else None
            ),
            timeout,
        )
        conn = cls(reader, writer, login.lower(), "#" + channel.lstrip("#").lower())
        try:
            await asyncio.wait_for(conn._register(token), timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _register(self, token: str) -> None:
        await self.send_line(f"CAP REQ :{CAPABILITIES}")
        await self.send_line(f"PASS oauth:{token}")
        await self.send_line(f"NICK {self.nick}")
        await self.send_line(f"USER {self.nick} 8 * :{self.nick}")
        joined = False
        while not joined:
            msg = await self.read()
            if msg.command == "CAP" and len(msg.params) >= 2 and msg.params[1] in ("ACK", "NAK"):
                self.tags = msg.params[1] == "ACK" and "twitch.tv/tags" in (msg.params[-1] or "")
                await self.send_line("CAP END")
            elif msg.command == "001":
                await self.send_line(f"JOIN {self.channel}")
            elif msg.command == "JOIN" and msg.nick.lower() == self.nick and msg.params[:1] == [self.channel]:
                joined = True
            elif msg.command in ("403", "405", "471", "473", "474", "475"):
                raise ConnectionError(
                    f"cannot join {self.channel}: {msg.params[-1] if msg.params else msg.command}"
                )
            elif msg.command in ("432", "433"):
                raise ConnectionError(f"nickname refused: {msg.params[-1] if msg.params else msg.command}")

    async def read(self) -> Message:
        """The next message; answers PING itself; raises LoginFailed, Reconnect, or
        ConnectionError when the server closes the connection."""
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError("server closed the connection")
            msg = parse(raw.decode("utf-8", errors="replace"))
            if msg is None:
                continue
            if msg.command == "PING":
                await self.send_line("PONG :" + (msg.params[-1] if msg.params else ""))
                continue
            if msg.command == "RECONNECT":
                raise Reconnect("server asked to reconnect")
            if msg.command == "464" or (
                msg.command == "NOTICE"
                and any(f in (msg.params[-1] if msg.params else "") for f in LOGIN_FAILURES)
            ):
                raise LoginFailed(msg.params[-1] if msg.params else "login refused")
            if msg.command == "ERROR":
                raise ConnectionError(f"server error: {msg.params[-1] if msg.params else ''}")
            return msg

    async def send_line(self, line: str) -> None:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()

    async def privmsg(self, text: str) -> None:
        await self.send_line(f"PRIVMSG {self.channel} :{clean_text(text)}")

    def close(self) -> None:
        # Already closed / transport gone: nothing left to release.
        with contextlib.suppress(Exception):
            self.writer.close()

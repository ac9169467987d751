"""A small IRC server that answers as irc.chat.twitch.tv does (dev.twitch.tv/docs/chat/irc),
for what miniircd cannot do: IRCv3 tags on every PRIVMSG (badges, display-name, id,
tmi-sent-ts), ``CAP * ACK``, the ``NOTICE * :Login authentication failed`` of a bad token,
and ``RECONNECT``. It relays each PRIVMSG to the channel's other members, like a chat
server; the bench uses it too (thousands of connections, a raid's worth of messages).

Runs in the caller's event loop: ``server = await TwitchLikeServer.start(tokens={"tok"})``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict


class Member:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.nick = ""
        self.channels: set[str] = set()
        self.last_sent: dict[str, str] = {}

    def send(self, line: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(line.encode() + b"\r\n")


class TwitchLikeServer:
    def __init__(self, tokens: set[str] | None) -> None:
        self.tokens = tokens  # None: any token is accepted
        self.members: set[Member] = set()
        self.channels: dict[str, set[Member]] = defaultdict(set)
        self.joins = 0
        self.logins_refused = 0
        self.received: list[str] = []
        self.keep = False  # keep every line received (tests), not in the bench
        self._ids = itertools.count(1)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, tokens: set[str] | None = None) -> TwitchLikeServer:
        self = cls(tokens)
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 16, backlog=4096)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"irc://127.0.0.1:{self.port}"

    def in_channel(self, channel: str) -> set[str]:
        return {m.nick for m in self.channels.get("#" + channel.lstrip("#"), set())}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        member = Member(writer)
        self.members.add(member)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        token_ok = self.tokens is None
        try:
            while raw := await reader.readline():
                line = raw.decode(errors="replace").rstrip("\r\n")
                if self.keep:
                    self.received.append(line)
                command, _, rest = line.partition(" ")
                if command == "CAP" and rest.startswith("REQ"):
                    member.send(f":tmi.twitch.tv CAP * ACK :{rest.partition(':')[2]}")
                elif command == "PASS":
                    token = rest.removeprefix("oauth:")
                    token_ok = self.tokens is None or token in self.tokens
                elif command == "NICK":
                    if not token_ok:
                        self.logins_refused += 1
                        member.send(":tmi.twitch.tv NOTICE * :Login authentication failed")
                        await writer.drain()
                        return
                    member.nick = rest.strip().lower()
                    member.send(f":tmi.twitch.tv 001 {member.nick} :Welcome, GLHF!")
                elif command == "JOIN":
                    channel = rest.strip().lower()
                    member.channels.add(channel)
                    self.channels[channel].add(member)
                    self.joins += 1
                    member.send(f":{member.nick}!{member.nick}@{member.nick}.tmi.twitch.tv JOIN {channel}")
                elif command == "PING":
                    member.send(f":tmi.twitch.tv PONG tmi.twitch.tv {rest}")
                elif command == "PRIVMSG":
                    channel, _, text = rest.partition(" :")
                    channel = channel.lower()
                    if member.last_sent.get(channel) == text:  # Twitch refuses a repeat within 30 s
                        member.send(
                            f"@msg-id=msg_duplicate :tmi.twitch.tv NOTICE {channel} :Your message was not sent "
                            "because it is identical to the previous one you sent, less than 30 seconds ago."
                        )
                    else:
                        member.last_sent[channel] = text
                        member.send(
                            f"@badge-info=;badges=broadcaster/1;color=;display-name={member.nick.title()};"
                            f"emote-sets=0;mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE {channel}"
                        )
                        self.relay(member.nick, channel, text, exclude=member)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self.tasks.discard(task)
            self.members.discard(member)
            for channel in member.channels:
                self.channels[channel].discard(member)
            writer.close()

    def relay(self, nick: str, channel: str, text: str, exclude: Member | None = None) -> None:
        """A PRIVMSG from ``nick`` to every member of ``channel`` (but ``exclude``), with Twitch's tags."""
        tags = (
            f"@badge-info=;badges=subscriber/6,premium/1;color=#1E90FF;display-name={nick.title()};emotes=;"
            f"first-msg=0;flags=;id=msg-{next(self._ids)};mod=0;room-id=1;subscriber=1;"
            f"tmi-sent-ts={int(time.time() * 1000)};turbo=0;user-id=2;user-type="
        )
        line = f"{tags} :{nick}!{nick}@{nick}.tmi.twitch.tv PRIVMSG {channel} :{text}"
        for member in self.channels.get(channel, ()):
            if member is not exclude:
                member.send(line)

    def reconnect_all(self) -> None:
        """Twitch's maintenance notice: every client must reconnect (the server then closes)."""
        for member in list(self.members):
            member.send(":tmi.twitch.tv RECONNECT")
            member.writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for member in list(self.members):
                member.writer.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

"""The Twitch IRC client: parsing, and real sessions against miniircd (plain IRC, a
password) and against a small server that speaks Twitch's documented lines (tags,
CAP ACK, PING, RECONNECT, the login-failure NOTICE), which miniircd cannot send."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from devtools.processes import wait_until
from platforms.twitch.irc import Endpoint, IrcConnection, LoginFailed, Reconnect, clean_text, endpoint, parse
from tests.irc import IrcServer, Viewer


def test_parse_twitch_privmsg_with_tags():
    line = (
        "@badge-info=subscriber/8;badges=broadcaster/1,subscriber/6;display-name=Ronni\\sX;"
        "id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;tmi-sent-ts=1642696567751 "
        ":ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :Kappa Keepo Kappa\r\n"
    )
    msg = parse(line)
    assert msg is not None
    assert msg.command == "PRIVMSG" and msg.params == ["#ronni", "Kappa Keepo Kappa"]
    assert msg.nick == "ronni"
    assert msg.tags["display-name"] == "Ronni X"
    assert msg.tags["badges"] == "broadcaster/1,subscriber/6"
    assert msg.tags["tmi-sent-ts"] == "1642696567751"


def test_parse_odd_lines():
    assert parse("") is None
    assert parse(":prefix.only") is None
    assert parse("PING :tmi.twitch.tv").params == ["tmi.twitch.tv"]  # type: ignore[union-attr]
    assert parse("@a=b\\:c\\\\d;e :x 001 me :hi").tags == {"a": "b;c\\d", "e": ""}  # type: ignore[union-attr]


def test_endpoints_and_clean_text():
    assert endpoint("ircs://irc.chat.twitch.tv:6697") == Endpoint("irc.chat.twitch.tv", 6697, True)
    assert endpoint("irc://127.0.0.1:1234").tls is False
    with pytest.raises(ValueError):
        endpoint("http://example.com")
    assert clean_text("hi\r\nPRIVMSG #x :injected") == "hi PRIVMSG #x :injected"


@pytest.fixture
def ircd(tmp_path):
    server = IrcServer(tmp_path, password="oauth:right-token").start()
    yield server
    server.stop()


async def test_session_against_miniircd(ircd):
    irc = await IrcConnection.open(ircd.url, "Streamer", "right-token", "streamer")
    viewer = await Viewer.join(ircd, "viewer", "streamer")
    try:
        assert irc.tags is False  # miniircd NAKs the capabilities
        await viewer.say("streamer", "hello there")
        async with asyncio.timeout(5):
            while True:
                msg = await irc.read()
                if msg.command == "PRIVMSG":
                    break
        assert (msg.nick, msg.params) == ("viewer", ["#streamer", "hello there"])
        await irc.privmsg("hi back\nQUIT")
        line = await viewer.wait_for(lambda line: "PRIVMSG #streamer" in line and "streamer!" in line, 5)
        assert line.endswith(":hi back QUIT")
    finally:
        irc.close()
        await viewer.close()


async def test_wrong_password_is_login_failed(ircd):
    with pytest.raises(LoginFailed, match="Password incorrect"):
        await IrcConnection.open(ircd.url, "streamer", "wrong-token", "streamer")


class TwitchLike:
    """Answers as irc.chat.twitch.tv does (dev.twitch.tv/docs/chat/irc): CAP ACK, 001,
    the JOIN echo; then runs ``script`` lines; records what the client sent."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.received: list[str] = []
        self.script: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nick = ""
        while raw := await reader.readline():
            line = raw.decode().rstrip("\r\n")
            self.received.append(line)
            if line.startswith("CAP REQ"):
                writer.write(b":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands\r\n")
            elif line.startswith("PASS") and line != f"PASS oauth:{self.token}":
                writer.write(b":tmi.twitch.tv NOTICE * :Login authentication failed\r\n")
                await writer.drain()
                writer.close()
                return
            elif line.startswith("NICK"):
                nick = line.split()[1]
                writer.write(f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!\r\n".encode())
            elif line.startswith("JOIN"):
                channel = line.split()[1]
                writer.write(f":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN {channel}\r\n".encode())
                for scripted in self.script:
                    writer.write(scripted.encode() + b"\r\n")
            await writer.drain()


async def test_twitch_tags_ping_and_reconnect():
    server = TwitchLike("tok")
    server.script = [
        "PING :tmi.twitch.tv",
        "@badges=moderator/1;display-name=Mod;id=m1;tmi-sent-ts=1700000000000 :mod!mod@mod.tmi.twitch.tv PRIVMSG #chan :hey",
        ":tmi.twitch.tv RECONNECT",
    ]
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    irc = await IrcConnection.open(f"irc://127.0.0.1:{port}", "chan", "tok", "chan")
    try:
        assert irc.tags is True
        msg = await irc.read()
        assert msg.tags["display-name"] == "Mod" and msg.params[-1] == "hey"
        with pytest.raises(Reconnect):
            await irc.read()
        await wait_until(lambda: "PONG :tmi.twitch.tv" in server.received, 5, "the PONG")
        assert server.received[:4] == [
            "CAP REQ :twitch.tv/tags twitch.tv/commands",
            "PASS oauth:tok",
            "NICK chan",
            "USER chan 8 * :chan",
        ]
        with pytest.raises(LoginFailed, match="Login authentication failed"):
            await IrcConnection.open(f"irc://127.0.0.1:{port}", "chan", "bad", "chan")
    finally:
        irc.close()
        listener.close()
        await listener.wait_closed()


def self_signed(directory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A certificate for 127.0.0.1 (and its key), as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


async def test_ircs_is_tls_and_checks_the_certificate(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    server = IrcServer(tmp_path, password="oauth:tls-token", tls=(cert, key)).start()
    try:
        url = f"ircs://127.0.0.1:{server.port}"
        # Not trusted: refused (no fallback to plain text).
        with pytest.raises(ssl.SSLCertVerificationError):
            await IrcConnection.open(url, "streamer", "tls-token", "streamer")
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # the system's trust store, as OpenSSL reads it
        irc = await IrcConnection.open(url, "streamer", "tls-token", "streamer")
        assert irc.writer.get_extra_info("ssl_object") is not None
        irc.close()
    finally:
        server.stop()


def test_chat_data_of_a_tagged_line_and_of_a_me_action():
    from platforms.clients import TwitchClient

    line = "@badges=vip/1;display-name=Ana;id=abc;tmi-sent-ts=1700000000500 :ana!ana@x PRIVMSG #streamer :\x01ACTION waves\x01"
    msg = parse(line)
    assert msg is not None
    assert TwitchClient.chat_data(msg) == {
        "platform": "twitch",
        "channel": "streamer",
        "id": "abc",
        "author": "Ana",
        "text": "waves",
        "ts": 1700000000.5,
        "badges": ["vip/1"],
    }

"""The self-hosted RTMP ingest: nginx with Debian's RTMP module, configured from Python.

One nginx (a master and one worker process) serves every user. Its configuration is
written to a private prefix directory (``render``), never the system's /etc/nginx:

* ``application live``: OBS publishes to ``rtmp://<host>:<RTMP_PORT>/live/<stream key>``.
  ``on_publish`` asks daphne (broadcast/views.py) whether the key is a user's current
  key; daphne answers a redirect to the user's internal stream name (``u<user id>``), so
  the key itself is never a stream name: relays, ``/stat`` and logs see ``u<id>`` only.
  Any other answer refuses the publish. ``on_publish_done`` tells daphne the publisher
  left. Both callbacks carry a secret in their path (``callback_secret``, derived from
  SECRET_KEY, so daphne and this process agree without configuration) and daphne also
  accepts them from loopback only.
* ``allow play 127.0.0.1; deny play all``: only this machine's relays may read a stream.
* Logs: no access log (its default format holds the stream name, that is the key), and
  the error log at ``warn`` (the RTMP module logs stream names at ``info``).

nginx-rtmp was picked by measuring (docs/broadcast.md): about 1 % CPU of one core per
720p30 publisher plus reader, a few MB of memory, and a C server that keeps up with many
publishers; node-media-server needed a Node runtime and more CPU per stream, pyrtmp has
no play side at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from streampai.logredact import MASK, register

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")

# The callbacks' path carries callback_secret(): masked in every log line (daphne's access log too).
register(r"(/broadcast/ingest/)[^/\s\"']+", rf"\g<1>{MASK}", "/broadcast/ingest/")
APP = "live"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def unavailable() -> str | None:
    """Why this machine cannot run the ingest, or None."""
    if nginx_binary() is None:
        return "nginx is not installed (make system-deps, or: apt-get install nginx libnginx-mod-rtmp)"
    if not RTMP_MODULE.exists():
        return (
            "nginx's RTMP module is not installed (make system-deps, or: apt-get install libnginx-mod-rtmp)"
        )
    return None


def callback_secret() -> str:
    """The secret in the callback URLs: HMAC of a fixed label with SECRET_KEY (url-safe hex)."""
    return hmac.new(
        settings.SECRET_KEY.encode(), b"streampai.broadcast.ingest-callback", hashlib.sha256
    ).hexdigest()[:40]


def stream_name(user_id: str) -> str:
    """The internal stream name a user's publish is redirected to."""
    return f"u{user_id}"


def user_of_stream(name: str) -> str | None:
    """The user id of an internal stream name (None if ``name`` is not one)."""
    if name.startswith("u") and name[1:].isdigit():
        return name[1:]
    return None


def play_url(user_id: str, port: int, host: str = "127.0.0.1") -> str:
    """Where a relay on this machine reads the user's stream."""
    return f"rtmp://{host}:{port}/{APP}/{stream_name(user_id)}"


@dataclass(frozen=True)
class IngestConfig:
    prefix: Path  # private directory: nginx.conf, logs/, nginx.pid
    port: int  # RTMP_PORT
    callback_base: str  # daphne's base URL, e.g. http://127.0.0.1:8000
    bind: str = ""  # "" = every interface (OBS may run on another machine)

    def callback(self, what: str) -> str:
        return f"{self.callback_base.rstrip('/')}/broadcast/ingest/{callback_secret()}/{what}"


def render(conf: IngestConfig) -> str:
    listen = f"{conf.bind}:{conf.port}" if conf.bind else str(conf.port)
    return f"""# Written by broadcast/ingest.py; regenerated at every start, do not edit.
load_module {RTMP_MODULE};
worker_processes 1;
daemon off;
master_process on;
pid {conf.prefix / "nginx.pid"};
error_log {conf.prefix / "logs" / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    # Only on a unix socket in the prefix: the relays' owner polls /stat (who is publishing)
    # and uses /control (drop the publisher of a key that was just replaced).
    access_log off;
    client_body_temp_path {conf.prefix / "tmp"};
    proxy_temp_path {conf.prefix / "tmp"};
    fastcgi_temp_path {conf.prefix / "tmp"};
    uwsgi_temp_path {conf.prefix / "tmp"};
    scgi_temp_path {conf.prefix / "tmp"};
    server {{
        listen unix:{conf.prefix / "control.sock"};
        location /stat {{ rtmp_stat all; }}
        location /control {{ rtmp_control all; }}
    }}
}}
rtmp {{
    access_log off;
    server {{
        listen {listen};
        chunk_size 4096;
        notify_method post;
        application {APP} {{
            live on;
            record off;
            idle_streams off;
            wait_key on;
            wait_video on;
            drop_idle_publisher 10s;
            allow play 127.0.0.1;
            deny play all;
            on_publish {conf.callback("publish")};
            on_publish_done {conf.callback("publish_done")};
        }}
    }}
}}
"""


def control_socket(prefix: Path) -> Path:
    return prefix / "control.sock"


def write_config(conf: IngestConfig) -> Path:
    (conf.prefix / "logs").mkdir(parents=True, exist_ok=True)
    (conf.prefix / "tmp").mkdir(parents=True, exist_ok=True)
    control_socket(conf.prefix).unlink(missing_ok=True)
    path = conf.prefix / "nginx.conf"
    path.write_text(render(conf))
    return path


def command(conf: IngestConfig) -> list[str]:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(unavailable() or "nginx missing")
    path = write_config(conf)
    return [binary, "-p", str(conf.prefix), "-e", str(conf.prefix / "logs" / "error.log"), "-c", str(path)]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies."""
    from broadcast.procs import set_pdeathsig

    set_pdeathsig(
        signal.SIGTERM
    )  # nginx's fast shutdown: the master stops its worker too (SIGKILL would orphan it)


def start(conf: IngestConfig, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start nginx (foreground, so the caller owns it); it dies with the caller."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            command(conf),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]

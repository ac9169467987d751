"""``manage.py runingest``: the self-hosted RTMP ingest (nginx-rtmp), in the foreground.

Writes its configuration under INGEST_DIR (default var/ingest), listens on RTMP_PORT and
points its callbacks at daphne (``--callback``, default http://127.0.0.1:$PORT). Where nginx
or its RTMP module is missing, or RTMP_PORT is taken, it says why and waits, and an nginx
that dies is started again with backoff: `make run` stops every process when one exits,
and daphne and the worker must keep running; the Stream page says why streaming is off.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broadcast import ingest
from broadcast.backends.selfhosted import ingest_dir
from livestream.conf import get_settings
from livestream.tasks import retry_delay


class Command(BaseCommand):
    help = "Run the self-hosted RTMP ingest (nginx with the RTMP module) in the foreground."

    def add_arguments(self, parser: CommandParser) -> None:
        port = os.environ.get("PORT", "8000")
        parser.add_argument("--callback", default=f"http://127.0.0.1:{port}", help="daphne's base URL")
        parser.add_argument("--bind", default="", help="address to listen on (default: every interface)")

    def handle(self, *args: Any, **options: Any) -> None:
        conf = get_settings()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        missing = ingest.unavailable()
        if missing:
            self.say(f"RTMP ingest unavailable: {missing}. Streaming is off; everything else runs.")
            stop.wait()
            return
        config = ingest.IngestConfig(ingest_dir(), conf.RTMP_PORT, options["callback"], options["bind"])
        failures = 0
        while not stop.is_set():
            taken = port_in_use(conf.RTMP_PORT, options["bind"])
            if taken:
                self.say(f"RTMP ingest waiting: port {conf.RTMP_PORT} is in use ({taken}); set RTMP_PORT")
                stop.wait(retry_delay(failures + 1, 2.0, 30.0))
                failures += 1
                continue
            proc = ingest.start(config)
            self.say(
                f"RTMP ingest on rtmp://{conf.RTMP_PUBLIC_HOST}:{conf.RTMP_PORT}/{ingest.APP} "
                f"(nginx pid {proc.pid}, config {config.prefix / 'nginx.conf'})"
            )
            started = time.monotonic()
            while not stop.is_set() and proc.poll() is None:
                stop.wait(0.5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return
            # nginx died: say why (its error log names no key) and start it again, with backoff,
            # rather than exit (`make run` would stop daphne and the worker with it).
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = retry_delay(failures, 1.0, 30.0)
            log = (config.prefix / "logs" / "error.log").read_text(errors="replace").strip().splitlines()[-3:]
            self.say(f"nginx exited with status {proc.returncode}; again in {delay:.0f}s: " + " | ".join(log))
            stop.wait(delay)

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()


def port_in_use(port: int, bind: str) -> str | None:
    """Why ``port`` cannot be listened on (another RTMP server, a second `make run`), or None."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind or "0.0.0.0", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None

"""``manage.py runingest``: the self-hosted RTMP ingest (nginx-rtmp), in the foreground.

Writes its configuration under INGEST_DIR (default var/ingest), listens on RTMP_PORT and
points its callbacks at daphne (``--callback``, default http://127.0.0.1:$PORT). Where nginx
or its RTMP module is missing it says why and waits, so `make run` (honcho stops every
process when one exits) keeps daphne and the worker running; the Stream page says the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broadcast import ingest
from broadcast.backends.selfhosted import ingest_dir
from livestream.conf import get_settings


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
            self.stdout.write(f"RTMP ingest unavailable: {missing}. Streaming is off; everything else runs.")
            self.stdout.flush()
            stop.wait()
            return
        config = ingest.IngestConfig(ingest_dir(), conf.RTMP_PORT, options["callback"], options["bind"])
        proc = ingest.start(config)
        self.stdout.write(
            f"RTMP ingest on rtmp://{conf.RTMP_PUBLIC_HOST}:{conf.RTMP_PORT}/{ingest.APP} "
            f"(nginx pid {proc.pid}, config {config.prefix / 'nginx.conf'})"
        )
        self.stdout.flush()
        while not stop.is_set():
            if proc.poll() is not None:
                log = (config.prefix / "logs" / "error.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"nginx exited with status {proc.returncode}:\n{log}")
            stop.wait(0.5)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()

"""The livestream app's settings: ``settings.LIVESTREAM`` over these defaults.

This is the one place the defaults live. Override any key in
``settings.LIVESTREAM``; streampai/settings.py maps the deploy-time ones to
environment variables.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True)
class LivestreamSettings:
    # Seconds between a user's last tab closing and their manager stopping.
    CLEANUP_TIMEOUT: float = 5.0
    # A daphne stopping gracefully (a deploy) ends its sockets' presence at once but
    # gives their users this much longer before the cleanup (seconds): their pages
    # reconnect to another daphne meanwhile and their managers never stop.
    HANDOFF_GRACE: float = 10.0
    # A stopping daphne spreads its tabs' reconnects over N / HANDOFF_RECONNECT_RATE
    # seconds (at least 2, at most 30): it closes them with 1012 and the reason
    # "spread=<s>", and presence.js waits a random 0.1..s. Set it near what one
    # daphne accepts per second (make bench: 5a, about 800 returning page sockets
    # per CPU-second here), times the daphnes left.
    HANDOFF_RECONNECT_RATE: float = 800.0
    # Names of the components every UserStreamManager supervises, from the
    # registry (livestream/components/registry.py; a name is the class name).
    # A user's rows in livestream.models.UserComponent enable or disable single
    # components on top of this list (livestream/components/choices.py).
    COMPONENTS: tuple[str, ...] = ("ConsoleLogger", "StreamStateServer", "AlertManager", "CloudflareManager")
    # More registry entries, {name: dotted path}: a dict written in a settings
    # module (the tests' fixtures use it), never from the environment or a form.
    EXTRA_COMPONENTS: dict[str, str] = field(default_factory=dict)
    # Seconds between ConsoleLogger lines.
    CONSOLE_LOG_INTERVAL: float = 1.0
    # Each open socket refreshes its presence this often (seconds) ...
    HEARTBEAT_INTERVAL: float = 10.0
    # ... and a connection not refreshed for this long is expired by the sweeper.
    PRESENCE_TTL: float = 30.0
    # A manager's ownership lease (seconds); its owner renews it every third of this.
    # A killed worker's users are taken over within LEASE_TTL + RECONCILE_INTERVAL.
    LEASE_TTL: float = 3.0
    # How often a worker compares what runs with what is present, sweeps expired
    # connections and publishes its state (seconds).
    RECONCILE_INTERVAL: float = 1.0
    # Effects outside Redis (a relay process, a chat connection) are stopped this long
    # before a lease its worker could not renew lapses (livestream/ownership/fencing.py):
    # time to stop them, plus any drift between this host's clock and Redis'.
    EFFECT_STOP_MARGIN: float = 0.5
    # Component supervision, as OTP: at most MAX_RESTARTS in MAX_RESTARTS_WINDOW
    # seconds, then the component is marked failed; restarts back off
    # exponentially from RESTART_BACKOFF up to RESTART_BACKOFF_MAX seconds.
    MAX_RESTARTS: int = 3
    MAX_RESTARTS_WINDOW: float = 5.0
    RESTART_BACKOFF: float = 0.1
    RESTART_BACKOFF_MAX: float = 2.0
    # A component still running this long after cancellation is abandoned.
    SHUTDOWN_TIMEOUT: float = 2.0
    # Channel-layer names: the presence topic/group and the worker's channel.
    TOPIC: str = "users_presence"
    WORKER_CHANNEL: str = "presence-manager"
    # Prefix of every Redis key the app writes (tests use one per test).
    KEY_PREFIX: str = "streampai"
    # Serve Prometheus metrics at /metrics (see livestream/observe/metrics.py); off by
    # default (404). When on, only staff sessions and requests bearing
    # ``Authorization: Bearer <METRICS_TOKEN>`` (if a token is set) may read them.
    METRICS_ENABLED: bool = False
    METRICS_TOKEN: str = ""
    # A staff "stop" of a user who is still present holds their manager down until
    # their next join (new tab, reload, reconnect), and at most this long (seconds).
    STAFF_STOP_HOLD: float = 86400.0
    # WebSocket frames larger than this close the socket.
    MAX_FRAME_BYTES: int = 64 * 1024
    # How often the worker pushes changed manager statuses to their users' open
    # dashboards (seconds; see livestream/pushes/status.py). At most one group_send
    # per running manager per push; 0 leaves only the lifecycle pushes.
    STATUS_PUSH_INTERVAL: float = 1.0
    # Dashboard socket limits (dashboard/consumers.py). Open dashboard sockets per
    # user across all daphne processes; one more is accepted then closed with 4029
    # ("too many open tabs"; presence.js retries only after 30-60 s).
    MAX_SOCKETS_PER_USER: int = 20
    # WebSocket handshakes per second per client IP, per daphne process (token
    # bucket; up to HANDSHAKE_BURST at once). Over it the handshake is refused
    # (HTTP 403). 0 disables it; behind a proxy every client has the proxy's IP
    # unless daphne runs with --proxy-headers.
    HANDSHAKE_RATE: float = 50.0
    HANDSHAKE_BURST: int = 500
    # Client frames per second per socket (token bucket, up to FRAME_BURST at once).
    # Frames over it are dropped and counted (one log line per socket per minute),
    # and the socket is not read for a moment. 0 disables it.
    FRAME_RATE: float = 20.0
    FRAME_BURST: int = 60
    # Dashboard handshakes doing their work (session and user lookups, checks, the
    # track) at once per daphne process; the others wait their turn in arrival
    # order, and one that could not start within HANDSHAKE_QUEUE_WAIT seconds is
    # refused at once (HTTP 403) rather than timing out after the work
    # (dashboard/ws/admission.py). Keep the wait under daphne's 5 s handshake timeout.
    MAX_PENDING_HANDSHAKES: int = 32
    HANDSHAKE_QUEUE_WAIT: float = 3.0
    # A dashboard handshake finds its session's user in a Redis cache instead of
    # the database (dashboard/auth/ws_auth.py): an entry lives this long at most
    # (seconds) and is dropped at once on logout, session rotation and any save of
    # the user. 0 turns the cache off (every handshake asks the database).
    WS_AUTH_CACHE_TTL: float = 300.0
    # Each daphne checks the sessions of its open dashboard sockets this often
    # (seconds; one query per 500 sessions) and closes the sockets of sessions
    # that expired or were deleted bypassing the ORM (raw SQL); ORM deletes and
    # password changes close them at once (dashboard/auth/revocation.py). 0: off.
    SESSION_SWEEP_INTERVAL: float = 1.0

    # --- Alerts (issue 11: the webhook and the AlertManager) ---
    # Alerts queued per user and not yet delivered; the webhook answers 429 beyond
    # it, so a flood cannot fill Redis (at most ALERT_QUEUE_CAP x ALERT_MAX_BODY_BYTES
    # per user).
    ALERT_QUEUE_CAP: int = 100
    # Largest webhook body accepted (bytes); larger ones get 413.
    ALERT_MAX_BODY_BYTES: int = 4096
    # Webhook rate limits (token buckets in Redis, alerts/ratelimit.py): POSTs per
    # second per client IP (checked before Django: refusing a flood costs little;
    # behind a proxy run daphne with --proxy-headers, or every sender is the proxy),
    # and alerts per second per user (after the secret). Over either: 429 with
    # Retry-After. A donation platform posting for many users shares one IP's
    # budget: raise ALERT_RATE_PER_IP for it. 0 turns a limit off.
    ALERT_RATE_PER_IP: float = 20.0
    ALERT_BURST_PER_IP: int = 100
    ALERT_RATE_PER_USER: float = 2.0
    ALERT_BURST_PER_USER: int = 30
    # Largest request body daphne reads for any other path (bytes); bigger ones are
    # refused with 413 while being read, before daphne buffers them
    # (dashboard/daphne/bodylimit.py). Webhook paths use ALERT_MAX_BODY_BYTES.
    MAX_REQUEST_BODY_BYTES: int = 2_621_440
    # Seconds the AlertManager waits between two alerts (and the overlay shows each).
    ALERT_DISPLAY_INTERVAL: float = 5.0
    # An idle AlertManager re-checks its queue this often (seconds) even without a
    # wake-up: a safety net only, wake-ups normally arrive within milliseconds.
    ALERT_RECHECK_INTERVAL: float = 30.0

    # --- Production (issue 9) ---
    # Ceiling of every Redis connection pool of a process (the app's client per
    # event loop, the channel layer's, the cache's). At the ceiling a command
    # waits for a free connection (up to 10 s) instead of opening another, so a
    # burst cannot leave thousands of idle connections behind. Redis' own
    # maxclients (10,000 by default) must exceed this times the process count.
    REDIS_MAX_CONNECTIONS: int = 64

    # --- Components that talk to their user's pages (issue 11) ---
    # A tab's command frame larger than this (bytes) gets an error reply, unread.
    COMMAND_MAX_BYTES: int = 4096
    # Commands per second per socket (token bucket, up to COMMAND_BURST at once);
    # over it a command gets a "too many commands" error reply. 0 disables it.
    COMMAND_RATE: float = 5.0
    COMMAND_BURST: int = 10
    # Seconds a tab's command may take, from daphne to the component and back.
    # When it runs out and the user's manager moved to another worker meanwhile
    # (the owner died), the command is sent once more to the new owner (a
    # per-command id in Redis keeps it from running twice); else the tab gets a
    # "timed out" error reply. A worker drops a command older than this.
    COMMAND_TIMEOUT: float = 5.0
    # Bytes daphne may hold unsent for one socket before it stops pushing events
    # to it: the socket is closed (4008) and the page reconnects and gets the
    # sticky state. A slow or dead tab never holds anybody else up.
    EVENT_SEND_BUFFER: int = 256 * 1024
    # StreamStateServer: seconds spent in "starting" before "live" and in
    # "ending" before "offline" (where a platform connection would be made/closed).
    STREAM_START_DELAY: float = 1.0
    STREAM_END_DELAY: float = 1.0

    # --- Connected platforms (issue 21: platforms/, the PlatformSupervisor) ---
    # Where each platform is reached; tests point them at local servers
    # (LIVESTREAM_TWITCH_IRC_URL=irc://127.0.0.1:<port> is plain TCP, ircs:// is TLS).
    TWITCH_IRC_URL: str = "ircs://irc.chat.twitch.tv:6697"
    TWITCH_HELIX_URL: str = "https://api.twitch.tv/helix"
    TWITCH_TOKEN_URL: str = "https://id.twitch.tv/oauth2/token"
    # Where a Twitch stream is sent (the RTMP "server"; the key comes from Helix).
    TWITCH_INGEST_URL: str = "rtmp://live.twitch.tv/app"
    YOUTUBE_API_URL: str = "https://www.googleapis.com/youtube/v3"
    GOOGLE_TOKEN_URL: str = "https://oauth2.googleapis.com/token"
    # Twitch's chat send limit for a normal user: TWITCH_SEND_LIMIT messages per
    # TWITCH_SEND_WINDOW seconds (a token bucket; over it send_chat is refused).
    TWITCH_SEND_LIMIT: int = 20
    TWITCH_SEND_WINDOW: float = 30.0
    # A platform's connection that drops or fails is retried after a backoff that
    # doubles from PLATFORM_RETRY_MIN up to PLATFORM_RETRY_MAX seconds (reset once
    # connected). A refused login is not retried until the connection changes.
    PLATFORM_RETRY_MIN: float = 0.25
    PLATFORM_RETRY_MAX: float = 30.0

    # --- Broadcast (issue 18: the ingest and the outputs, broadcast/ and docs/broadcast.md) ---
    # Where streams come in and how they are sent on: "selfhosted" (nginx-rtmp ingest +
    # local ffmpeg relays) or "cloudflare" (Cloudflare Stream); a name from the table in
    # broadcast/backends/__init__.py, never a dotted path (nothing is imported from a string
    # an environment variable carries).
    BROADCAST_BACKEND: str = "selfhosted"
    # go_live is refused unless the input is connected and an output is enabled. False
    # lets go_live change only the stream state (the behaviour before issue 18; the
    # test harness' processes use it for tests of the state machine alone).
    BROADCAST_REQUIRED: bool = True
    # OBS gone for less than this (seconds) keeps a live stream live and its outputs
    # resume when it is back; longer ends the stream ("stream ended: input gone").
    DISCONNECT_TIMEOUT: float = 30.0
    # The self-hosted RTMP ingest's port (environment: RTMP_PORT, as PORT is daphne's)
    # and the host OBS is told to publish to (the Stream page's "Server").
    RTMP_PORT: int = 1935
    RTMP_PUBLIC_HOST: str = "localhost"
    # The self-hosted ingest's private directory (nginx.conf, logs, its control socket);
    # "" = <var>/ingest. The worker finds the ingest's /stat and /control there.
    INGEST_DIR: str = ""
    # An output's relay restarts after a failure with backoff from RELAY_BACKOFF up to
    # RELAY_BACKOFF_MAX seconds (livestream.tasks.retry_delay).
    RELAY_BACKOFF: float = 0.5
    RELAY_BACKOFF_MAX: float = 10.0
    # The CloudflareManager asks the backend whether the input is connected this often
    # (seconds), in case a callback/webhook was lost; pushes normally arrive at once.
    INPUT_POLL_INTERVAL: float = 5.0

    # --- Cloudflare Stream (BROADCAST_BACKEND "cloudflare"; docs/cloudflare.md) ---
    # The account that owns the live inputs, and an API token with Account > Stream >
    # Edit on it (environment: CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN). Secrets:
    # never logged.
    CLOUDFLARE_ACCOUNT_ID: str = ""
    CLOUDFLARE_API_TOKEN: str = ""
    # The API's base URL; empty: the SDK's https://api.cloudflare.com/client/v4 (the
    # contract tests point it at a local server).
    CLOUDFLARE_API_BASE_URL: str = ""
    # The secret Cloudflare signs webhooks with (Webhook-Signature) or sends as
    # cf-webhook-auth (a Notifications webhook destination): POST /hooks/cloudflare/.
    CLOUDFLARE_WEBHOOK_SECRET: str = ""
    # A webhook whose signature time is further than this from our clock (seconds) is
    # refused: an old one replayed cannot flip the input's state.
    CLOUDFLARE_WEBHOOK_TOLERANCE: float = 300.0
    # Largest webhook body accepted (bytes); a live input notification is ~400.
    CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES: int = 16384
    # Cloudflare is asked at most this often (seconds) per running output (is its live
    # output still there and enabled?) and per user (input_connected, the polling
    # fallback of webhooks). Cloudflare allows 1,200 API calls per 5 minutes per token
    # for the whole account: at 30 s, ~40 users streaming to two outputs each, or ~150
    # users with a dashboard open. Input changes and new keys need no poll (webhooks).
    CLOUDFLARE_POLL_INTERVAL: float = 30.0
    # Seconds one Cloudflare API call may take (connecting: at most 5).
    CLOUDFLARE_TIMEOUT: float = 10.0


_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
    for f in fields(LivestreamSettings)
}


def _coerce(name: str, value: Any) -> Any:
    """Convert an override (often a string from the environment) to the key's type."""
    default = _DEFAULTS[name]
    if isinstance(default, dict):
        # Only settings code can build a dict: the environment gives strings, refused here.
        if not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise ImproperlyConfigured(
                f"LIVESTREAM[{name!r}] must be a dict of name -> dotted path written in settings code"
            )
        return dict(value)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else value
        return tuple(item.strip() for item in items if item.strip())
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"LIVESTREAM[{name!r}] must be a {type(default).__name__}, not {value!r}"
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> LivestreamSettings:
    overrides = dict(getattr(settings, "LIVESTREAM", {}) or {})
    unknown = set(overrides) - set(_DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"Unknown LIVESTREAM settings: {', '.join(sorted(unknown))}")
    return LivestreamSettings(**{name: _coerce(name, value) for name, value in overrides.items()})


def validate(conf: LivestreamSettings) -> None:
    """Raise ImproperlyConfigured (one line) for values that cannot work together.

    Called once at start (livestream.apps.LivestreamConfig.ready), so daphne and
    the worker refuse a bad configuration instead of misbehaving later. Not on
    every get_settings(): tests set odd combinations on purpose.
    """
    problems = []

    def need(ok: bool, why: str) -> None:
        if not ok:
            problems.append(why)

    for name in (
        "HEARTBEAT_INTERVAL",
        "HANDOFF_RECONNECT_RATE",
        "RECONCILE_INTERVAL",
        "CONSOLE_LOG_INTERVAL",
        "LEASE_TTL",
        "PRESENCE_TTL",
    ):
        need(getattr(conf, name) > 0, f"{name} must be > 0 (is {getattr(conf, name)})")
    for name in (
        "CLEANUP_TIMEOUT",
        "STATUS_PUSH_INTERVAL",
        "SHUTDOWN_TIMEOUT",
        "STAFF_STOP_HOLD",
        "WS_AUTH_CACHE_TTL",
        "SESSION_SWEEP_INTERVAL",
    ):
        need(getattr(conf, name) >= 0, f"{name} must be >= 0 (is {getattr(conf, name)})")
    # A worker fences (stops its managers) when it could not renew for
    # LEASE_TTL - RECONCILE_INTERVAL: that must leave room for at least one tick.
    need(
        conf.LEASE_TTL > conf.RECONCILE_INTERVAL,
        f"LEASE_TTL ({conf.LEASE_TTL}) must exceed RECONCILE_INTERVAL ({conf.RECONCILE_INTERVAL}): "
        "the fence threshold LEASE_TTL - RECONCILE_INTERVAL must stay positive",
    )
    # External effects stop EFFECT_STOP_MARGIN before an unrenewed lease lapses: a renewal
    # every RECONCILE_INTERVAL must come before that moment, or they would stop every round.
    need(
        0 < conf.EFFECT_STOP_MARGIN < conf.LEASE_TTL - conf.RECONCILE_INTERVAL,
        f"need 0 < EFFECT_STOP_MARGIN ({conf.EFFECT_STOP_MARGIN}) < LEASE_TTL - RECONCILE_INTERVAL "
        f"({conf.LEASE_TTL} - {conf.RECONCILE_INTERVAL}): effects stop before an unrenewed lease lapses, "
        "and never while renewals arrive",
    )
    # One late or lost heartbeat must not expire a live connection.
    need(
        conf.PRESENCE_TTL >= 2 * conf.HEARTBEAT_INTERVAL,
        f"PRESENCE_TTL ({conf.PRESENCE_TTL}) must be at least 2 x HEARTBEAT_INTERVAL ({conf.HEARTBEAT_INTERVAL})",
    )
    need(conf.MAX_RESTARTS >= 0, f"MAX_RESTARTS must be >= 0 (is {conf.MAX_RESTARTS})")
    need(conf.MAX_RESTARTS_WINDOW > 0, f"MAX_RESTARTS_WINDOW must be > 0 (is {conf.MAX_RESTARTS_WINDOW})")
    need(
        0 < conf.RESTART_BACKOFF <= conf.RESTART_BACKOFF_MAX,
        f"need 0 < RESTART_BACKOFF ({conf.RESTART_BACKOFF}) <= RESTART_BACKOFF_MAX ({conf.RESTART_BACKOFF_MAX})",
    )
    need(conf.MAX_FRAME_BYTES > 0, f"MAX_FRAME_BYTES must be > 0 (is {conf.MAX_FRAME_BYTES})")
    need(
        conf.MAX_PENDING_HANDSHAKES >= 1,
        f"MAX_PENDING_HANDSHAKES must be >= 1 (is {conf.MAX_PENDING_HANDSHAKES})",
    )
    need(
        0 < conf.HANDSHAKE_QUEUE_WAIT < 5,
        f"HANDSHAKE_QUEUE_WAIT must be > 0 and under daphne's 5 s handshake timeout (is {conf.HANDSHAKE_QUEUE_WAIT})",
    )
    need(conf.ALERT_QUEUE_CAP >= 1, f"ALERT_QUEUE_CAP must be >= 1 (is {conf.ALERT_QUEUE_CAP})")
    # The smallest useful alert with a message is a few hundred bytes; beyond 64 KiB
    # a webhook body is abuse, not an alert.
    need(
        256 <= conf.ALERT_MAX_BODY_BYTES <= 65536,
        f"ALERT_MAX_BODY_BYTES must be between 256 and 65536 (is {conf.ALERT_MAX_BODY_BYTES})",
    )
    need(
        conf.ALERT_DISPLAY_INTERVAL >= 0,
        f"ALERT_DISPLAY_INTERVAL must be >= 0 (is {conf.ALERT_DISPLAY_INTERVAL})",
    )
    need(
        conf.ALERT_RECHECK_INTERVAL > 0,
        f"ALERT_RECHECK_INTERVAL must be > 0 (is {conf.ALERT_RECHECK_INTERVAL})",
    )
    for name in ("ALERT_RATE_PER_IP", "ALERT_RATE_PER_USER"):
        need(getattr(conf, name) >= 0, f"{name} must be >= 0 (is {getattr(conf, name)})")
    for name in ("ALERT_BURST_PER_IP", "ALERT_BURST_PER_USER"):
        need(getattr(conf, name) >= 1, f"{name} must be >= 1 (is {getattr(conf, name)})")
    need(
        conf.MAX_REQUEST_BODY_BYTES >= 65536,
        f"MAX_REQUEST_BODY_BYTES must be >= 65536 (is {conf.MAX_REQUEST_BODY_BYTES})",
    )
    need(
        conf.REDIS_MAX_CONNECTIONS >= 4,
        f"REDIS_MAX_CONNECTIONS must be >= 4 (is {conf.REDIS_MAX_CONNECTIONS})",
    )
    for name in ("KEY_PREFIX", "TOPIC", "WORKER_CHANNEL"):
        need(bool(getattr(conf, name)), f"{name} must not be empty")
    need(bool(conf.COMPONENTS), "COMPONENTS must list at least one component")
    from livestream.components.builtin import BUILTIN

    registered = {**BUILTIN, **conf.EXTRA_COMPONENTS}
    unknown = [name for name in conf.COMPONENTS if name not in registered]
    need(
        not unknown,
        f"COMPONENTS names unknown components {', '.join(map(repr, unknown))} "
        f"(registered: {', '.join(registered)}; a name is a class name, not a dotted path)",
    )
    need(
        64 <= conf.COMMAND_MAX_BYTES <= conf.MAX_FRAME_BYTES,
        f"COMMAND_MAX_BYTES must be between 64 and MAX_FRAME_BYTES (is {conf.COMMAND_MAX_BYTES})",
    )
    need(conf.COMMAND_RATE >= 0, f"COMMAND_RATE must be >= 0 (is {conf.COMMAND_RATE})")
    need(conf.COMMAND_BURST >= 1, f"COMMAND_BURST must be >= 1 (is {conf.COMMAND_BURST})")
    need(conf.COMMAND_TIMEOUT > 0, f"COMMAND_TIMEOUT must be > 0 (is {conf.COMMAND_TIMEOUT})")
    need(conf.EVENT_SEND_BUFFER >= 4096, f"EVENT_SEND_BUFFER must be >= 4096 (is {conf.EVENT_SEND_BUFFER})")
    need(conf.DISCONNECT_TIMEOUT >= 0, f"DISCONNECT_TIMEOUT must be >= 0 (is {conf.DISCONNECT_TIMEOUT})")
    need(0 < conf.RTMP_PORT < 65536, f"RTMP_PORT must be a TCP port (is {conf.RTMP_PORT})")
    need(
        0 < conf.RELAY_BACKOFF <= conf.RELAY_BACKOFF_MAX,
        f"need 0 < RELAY_BACKOFF ({conf.RELAY_BACKOFF}) <= RELAY_BACKOFF_MAX ({conf.RELAY_BACKOFF_MAX})",
    )
    need(conf.INPUT_POLL_INTERVAL > 0, f"INPUT_POLL_INTERVAL must be > 0 (is {conf.INPUT_POLL_INTERVAL})")
    need(
        conf.BROADCAST_BACKEND in ("selfhosted", "cloudflare"),
        f"BROADCAST_BACKEND must be 'selfhosted' or 'cloudflare' (is {conf.BROADCAST_BACKEND!r})",
    )
    if conf.BROADCAST_BACKEND == "cloudflare":
        # Names only: these values are secrets.
        for name in ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_WEBHOOK_SECRET"):
            need(
                bool(str(getattr(conf, name)).strip()),
                f"{name} must be set when BROADCAST_BACKEND is 'cloudflare' (environment: {name})",
            )
        base_url = conf.CLOUDFLARE_API_BASE_URL
        need(
            not base_url or base_url.startswith(("https://", "http://")),
            f"CLOUDFLARE_API_BASE_URL must be an http(s) URL (is {base_url!r})",
        )
    for name in ("CLOUDFLARE_WEBHOOK_TOLERANCE", "CLOUDFLARE_POLL_INTERVAL", "CLOUDFLARE_TIMEOUT"):
        need(getattr(conf, name) > 0, f"{name} must be > 0 (is {getattr(conf, name)})")
    need(
        1024 <= conf.CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES <= 1048576,
        f"CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES must be between 1024 and 1048576 (is {conf.CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES})",
    )
    for name in ("STREAM_START_DELAY", "STREAM_END_DELAY"):
        need(getattr(conf, name) >= 0, f"{name} must be >= 0 (is {getattr(conf, name)})")
    for name in (
        "TWITCH_IRC_URL",
        "TWITCH_HELIX_URL",
        "TWITCH_TOKEN_URL",
        "YOUTUBE_API_URL",
        "GOOGLE_TOKEN_URL",
    ):
        need("://" in getattr(conf, name), f"{name} must be a URL (is {getattr(conf, name)!r})")
    need(conf.TWITCH_SEND_LIMIT >= 1, f"TWITCH_SEND_LIMIT must be >= 1 (is {conf.TWITCH_SEND_LIMIT})")
    need(conf.TWITCH_SEND_WINDOW > 0, f"TWITCH_SEND_WINDOW must be > 0 (is {conf.TWITCH_SEND_WINDOW})")
    need(
        0 < conf.PLATFORM_RETRY_MIN <= conf.PLATFORM_RETRY_MAX,
        f"need 0 < PLATFORM_RETRY_MIN ({conf.PLATFORM_RETRY_MIN}) <= PLATFORM_RETRY_MAX ({conf.PLATFORM_RETRY_MAX})",
    )
    if problems:
        raise ImproperlyConfigured("LIVESTREAM: " + "; ".join(problems))


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: object) -> None:
    if setting == "LIVESTREAM":
        get_settings.cache_clear()

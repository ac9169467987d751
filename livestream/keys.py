"""Every Redis key the app writes, in one place. All start with ``KEY_PREFIX``
(default ``streampai``), so several deployments or test runs can share a Redis.

  presence:<topic>:users          SET    users with a connection           presence.py
  presence:<topic>:u:<user>       HASH   ref -> meta JSON, one per connection
  presence:<topic>:expiry         ZSET   "<user>|<ref>" -> heartbeat deadline
  presence:<topic>:gone:<ref>     STRING a connection untracked for good
  presence:<topic>:events         LIST   presence_diffs for the workers
  presence:<topic>:rebuilt:<user> STRING a heartbeat re-tracked the user (Redis lost them): no
                                         lease is granted for LEASE_TTL but back to its owner
  lease:<user>                    STRING the worker running the user (or a staff hold)  leases.py
  workers                         ZSET   worker id -> last beat (Redis clock)
  workers:load                    HASH   worker id -> managers it runs (placement)
  workers:dead                    SET    workers seen dead on their machine
  worker:<id>                     HASH   inbox, host, pid, proc identity
  worker:<id>:starts              LIST   users another worker placed on it
  worker:<id>:commands            LIST   tabs' commands for the components it runs  commands.py
  epoch, epoch:hold               STRING Redis lost its data? / no new lease meanwhile
  epoch:master                    STRING the master_replid grants last ran on (a new master holds grants)
  fence:<user>                    STRING the user's current fencing token (ownership/fencing.py)
  fence-refused                   STRING writes refused for a stale token (a counter)
  timers, timers:payload          ZSET + HASH  named timers (cleanup:<user>)      timers.py
  managers:<worker>(:next)        HASH   user -> manager status JSON              state.py
  metrics:join_to_running         HASH   histogram buckets                        metrics.py
  metrics:restarts                HASH   component -> restarts
  alerts:<user>:queue             LIST   alert JSON waiting for delivery, oldest first  alert_queue.py
  alerts:<user>:inflight          STRING the alert taken and being emitted (at most one)
  alerts:<user>:owner             STRING token of the AlertManager instance delivering
  alerts:<user>:delivered         STRING alerts delivered so far (a counter)
  alerts:wake                     pub/sub channel: "<user>" after each alert queued
  push:user:<user>, push:session:<hash>   pub/sub channels to open tabs           push.py
  wsauth:s:<hash>                 STRING a session's user, for handshakes     dashboard/auth/ws_auth.py
  wsauth:u:<user>                 SET    that user's wsauth:s keys
  wsauth:gen                      STRING bumped on every invalidation
  push:control:<user>             pub/sub every open tab of the user: control, component
                                  events and command replies                      push.py
  sticky:<user>                   HASH   "<Component>:<event>" -> event frame JSON, sent to
                                         a tab right after it connects          component_events.py
  command:<user>:<id>             STRING the worker that took a tab's command (run once)  commands.py
  stream:<user>                   HASH   StreamStateServer's state and timestamps  components/stream_state.py
  broadcast:input:<user>          HASH   the user's ingest input: state, since, presence ref  broadcast/inputs.py
  broadcast:wake                  pub/sub channel: "<user>" after each input change
  broadcast:publishers            HASH   ingest client id -> user, per publish in progress  broadcast/inputs.py
  broadcast:cf:event:<input uid>  STRING time of the last Cloudflare webhook event applied for that
                                         live input (older ones are dropped)  broadcast/cloudflare_webhook.py

The channel layer's keys live under ``<KEY_PREFIX>:asgi`` (channels-redis' own
layout). None of these are Redis Cluster ready: scripts touch keys of several users.
"""

from __future__ import annotations

from livestream.conf import get_settings


def key(*parts: str) -> str:
    """A Redis key under the configured prefix: key("lease", "42") -> "streampai:lease:42"."""
    return ":".join((get_settings().KEY_PREFIX, *parts))


def presence(topic: str) -> str:
    """The base of a presence topic's keys (``:users``, ``:u:<user>``, ...)."""
    return key("presence", topic)


def presence_user(topic: str, user_id: str) -> str:
    """A user's connections in a presence topic (HASH ref -> meta; livestream/presence/store.py)."""
    return f"{presence(topic)}:u:{user_id}"


def lease_prefix() -> str:
    return key("lease", "")


def fence_prefix() -> str:
    """``fence:<user>``: the token of the user's current lease grant (livestream/ownership/fencing.py)."""
    return key("fence", "")


def fence_token(user_id: str) -> str:
    return fence_prefix() + user_id


def fence_refused() -> str:
    return key("fence-refused")


def workers() -> str:
    return key("workers")


def worker_loads() -> str:
    return key("workers", "load")


def dead_workers() -> str:
    return key("workers", "dead")


def worker(worker_id: str) -> str:
    return key("worker", worker_id)


def worker_starts(worker_id: str) -> str:
    return key("worker", worker_id, "starts")


def worker_commands(worker_id: str) -> str:
    return key("worker", worker_id, "commands")


def epoch() -> str:
    return key("epoch")


def epoch_hold() -> str:
    return key("epoch", "hold")


def timers() -> str:
    return key("timers")


def timer_payloads() -> str:
    return key("timers", "payload")


def managers(worker_id: str) -> str:
    return key("managers", worker_id)


def metrics(name: str) -> str:
    return key("metrics", name)


def alerts(user_id: str, part: str) -> str:
    """One of a user's alert keys: ``queue``, ``inflight``, ``owner`` or ``delivered``."""
    return key("alerts", user_id, part)


def alerts_wake() -> str:
    return key("alerts", "wake")


def push(*parts: str) -> str:
    return key("push", *parts)


def ws_auth_session(session_hash: str) -> str:
    return key("wsauth", "s", session_hash)


def ws_auth_user(user_id: str) -> str:
    return key("wsauth", "u", user_id)


def ws_auth_generation() -> str:
    return key("wsauth", "gen")


def control(user_id: str) -> str:
    """Pub/sub channel every open dashboard tab of ``user_id`` is subscribed to."""
    return push("control", user_id)


def sticky_prefix() -> str:
    return key("sticky", "")


def sticky(user_id: str) -> str:
    return sticky_prefix() + user_id


def command(user_id: str, command_id: str) -> str:
    return key("command", user_id, command_id)


def stream_state(user_id: str) -> str:
    return key("stream", user_id)


def broadcast_input(user_id: str) -> str:
    """The user's ingest input state (broadcast/inputs.py)."""
    return key("broadcast", "input", user_id)


def broadcast_wake() -> str:
    """Pub/sub: the user id after each change of their input state (broadcast/inputs.py)."""
    return key("broadcast", "wake")


def platform_refresh_lock(connection_pk: str) -> str:
    """STRING (a random owner token, PX-bounded): one worker refreshes a connection's OAuth token at a time."""
    return key("platforms", "refresh", connection_pk)


def platform_chat_page(connection_pk: str) -> str:
    """STRING (EX 120 s): the next YouTube liveChatMessages page token of a connection, so the
    next owner of the user (a failover) continues where the last one stopped."""
    return key("platforms", "chatpage", connection_pk)


def broadcast_publishers() -> str:
    """The self-hosted ingest's publishes in progress: nginx client id -> user (broadcast/inputs.py)."""
    return key("broadcast", "publishers")


def cloudflare_event(input_uid: str) -> str:
    """When the last webhook event applied for a Cloudflare live input happened (broadcast/cloudflare_webhook.py)."""
    return key("broadcast", "cf", "event", input_uid)

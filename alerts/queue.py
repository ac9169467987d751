"""Each user's alert queue in Redis: filled by the webhook, drained by their AlertManager.

Keys (livestream/keys.py), per user:

  alerts:<user>:queue      LIST    alert JSON, oldest first (RPUSH in, LPOP out)
  alerts:<user>:inflight   STRING  the one alert taken and being emitted
  alerts:<user>:owner      STRING  token of the AlertManager instance allowed to take
  alerts:<user>:delivered  STRING  count of alerts delivered (survives failover)
  alerts:wake              pub/sub "<user>" after each push (wakes that user's manager)

An alert as stored and emitted (the webhook validated it; alerts/validation.py):

  {"id": "3f9c1a...", "kind": "donation", "from": "Ana", "amount": 5, "currency": "EUR",
   "message": "gg", "queued_at": 1764477000.123}

Every step is one Lua script (one round trip, atomic):

  push(alert, cap)   RPUSH unless the queue holds ``cap`` already (the webhook's 429),
                     and PUBLISH the wake-up in the same step.
  claim(token)       a new AlertManager instance becomes the only one allowed to take;
                     an alert a predecessor left in flight is removed and returned (it
                     died between taking and acknowledging: see AlertManager's rule).
                     claim_many does it for many users in one call: a burst of 12,000
                     manager starts is 24 round trips (alert_wakeups.WakeListener.claim
                     batches them).
  take(token)        move the head of the queue into the in-flight slot, only for the
                     current owner (a superseded instance gets SUPERSEDED, never an alert;
                     with no owner recorded, Redis lost its data and the taker owns again);
                     AWAY, nothing taken, while the user has no connection in presence.
                     Under Sentinel the same round trip WAITs for a replica to have the
                     take (run_script_replicated): a failover cannot then give an alert
                     already shown back to the queue, to be shown again.
  ack(alert_id)      the in-flight alert was emitted (or its emit failed): clear the slot,
                     count it as delivered (or not).

take and ack are fenced (livestream/ownership/fencing.py): given the component's ``fence``,
a stale lease token's take gets SUPERSEDED and its ack changes nothing (the alert stays
in flight, and the current owner's claim reports it lost, with its reason).

The queue has no TTL: alerts wait, however long, until the user's manager runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from livestream import keys
from livestream.conf import get_settings
from livestream.ownership import fencing
from livestream.redis import get_redis, run_script, run_script_replicated, script

Alert = dict[str, Any]

# take() returns this instead of an alert when a newer AlertManager instance owns the queue,
SUPERSEDED = "superseded"
# ... and this when the user has no open tab: nothing is taken (an emit would reach nobody).
AWAY = "away"
# The script's answer to a stale lease token (take returns SUPERSEDED for it).
_FENCED = "fenced"

# KEYS: queue, wake channel, the alert id's marker. ARGV: alert, cap, user, marker TTL.
# The marker makes a push idempotent: redis-py sends a command again after a connection
# error, also when the first one ran (its reply was lost), and the alert must not be
# queued twice.
_PUSH = script(
    "alerts.push",
    """
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then return redis.call('LLEN', KEYS[1]) end
local n = redis.call('LLEN', KEYS[1])
if n >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[3]); return -1 end
n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return n
""",
)
# How long a pushed alert's id is remembered against a repeated push (seconds).
PUSHED_TTL = 3600

# KEYS: inflight. ARGV: alert id. Rewrites the in-flight slot if it still holds the alert:
# a write after the take, so a replica that acknowledges it has the take too.
_TOUCH = script(
    "alerts.touch",
    """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['id'] == ARGV[1] then
  redis.call('SET', KEYS[1], current)
  return 1
end
return 0
""",
)

# Many users at once (a burst of manager starts): KEYS are 5 per user (owner, inflight,
# queue, delivered, fencing token) then the refused counter; ARGV 2 per user (the
# instance's claim token, its lease's fencing token or ''). A stale fencing token claims
# nothing (queued -1): it must not supersede the current owner's instance.
_CLAIM = fencing.script(
    "alerts.claim",
    """
local out = {}
for i = 1, #ARGV / 2 do
  local k = (i - 1) * 5
  if not fence_ok(KEYS[k + 5], ARGV[2 * i], KEYS[#KEYS]) then
    out[i] = {false, -1, 0}
  else
    redis.call('SET', KEYS[k + 1], ARGV[2 * i - 1])
    local stale = redis.call('GET', KEYS[k + 2])
    if stale then redis.call('DEL', KEYS[k + 2]) end
    out[i] = {stale or false, redis.call('LLEN', KEYS[k + 3]), tonumber(redis.call('GET', KEYS[k + 4]) or '0')}
  end
end
return out
""",
)

# No owner at all means Redis lost its data (a restart without persistence, a failover
# to an empty replica): the running instance claims again rather than stop delivering.
# An in-flight alert still there when its own owner takes again was left by that
# owner's previous step, which failed after the take (a lost reply, an ack that did not
# reach Redis): it is returned as ``previous`` (the component logs it) and replaced.
# No connection in the user's presence (their last tab closed and the manager waits out
# CLEANUP_TIMEOUT, or their tabs are reconnecting after a deploy): nothing is taken, the
# alerts wait for a tab (AWAY). A live stream's own presence connection (ref "stream-...",
# broadcast/inputs.py) is not a tab: it keeps the manager running, not the alerts flowing.
# KEYS: owner, queue, inflight, presence, token, refused counter. ARGV: claim token, fencing token.
_TAKE = fencing.script(
    "alerts.take",
    """
if not fence_ok(KEYS[5], ARGV[2], KEYS[6]) then return {'fenced', 0, false} end
local owner = redis.call('GET', KEYS[1])
if not owner then redis.call('SET', KEYS[1], ARGV[1])
elseif owner ~= ARGV[1] then return {'superseded', 0, false} end
local tab = false
for _, ref in ipairs(redis.call('HKEYS', KEYS[4])) do
  if string.sub(ref, 1, 7) ~= 'stream-' then tab = true; break end
end
if not tab then return {'away', redis.call('LLEN', KEYS[2]), false} end
local previous = redis.call('GET', KEYS[3])
local alert = redis.call('LPOP', KEYS[2])
if alert then redis.call('SET', KEYS[3], alert) else redis.call('DEL', KEYS[3]) end
return {alert or false, redis.call('LLEN', KEYS[2]), previous or false}
""",
)

# KEYS: inflight, delivered, token, refused counter. ARGV: alert id, '1' if delivered, fencing token.
_ACK = fencing.script(
    "alerts.ack",
    """
if not fence_ok(KEYS[3], ARGV[3], KEYS[4]) then return -1 end
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['id'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '1' then return redis.call('INCR', KEYS[2]) end
return tonumber(redis.call('GET', KEYS[2]) or '0')
""",
)


@dataclass(frozen=True)
class Claimed:
    """What a new owner finds: a predecessor's in-flight alert (or None), the queue, the count."""

    stale: Alert | None
    queued: int
    delivered: int
    fenced: bool = False  # the claimer's lease token is stale: nothing claimed


@dataclass(frozen=True)
class Taken:
    """The alert now in flight (None: the queue was empty), how many remain queued, and an
    alert this owner's previous step left in flight (see _TAKE)."""

    alert: Alert | None
    queued: int
    previous: Alert | None = None
    # Whether a replica had the take before it returned (None: the master has none). A
    # take a failover lost would show the alert again (livestream/redis.py REPLICA_WAIT).
    replicated: bool | None = None


class AlertQueue:
    """One user's alert queue (see the module docstring for the layout and the steps)."""

    def __init__(self, user_id: str, client: aioredis.Redis | None = None) -> None:
        self.user_id = user_id
        self._client = client
        self.replicated: bool | None = None  # of the last push

    @property
    def redis(self) -> aioredis.Redis:
        return self._client or get_redis()

    def _key(self, part: str) -> str:
        return keys.alerts(self.user_id, part)

    async def push(self, alert: Alert, cap: int) -> int | None:
        """Queue ``alert`` (it carries its id; a second push of the id is a no-op) and wake
        the manager; the new length, or None if full. ``self.replicated`` then says whether
        a replica has it (None: the master has none)."""
        length, self.replicated = await run_script_replicated(
            self.redis,
            _PUSH,
            [self._key("queue"), keys.alerts_wake(), self._key(f"pushed:{alert['id']}")],
            _encode(alert),
            cap,
            self.user_id,
            PUSHED_TTL,
        )
        return None if int(length) < 0 else int(length)

    async def confirm(self, alert_id: str) -> str:
        """After a take no replica acknowledged in time, ask again (a write after the take,
        then WAIT): "replicated" (or the master has no replica any more), "waiting" (not
        yet), or "gone" (the alert is no longer in flight: another instance claimed)."""
        touched, replicated = await run_script_replicated(
            self.redis, _TOUCH, [self._key("inflight")], alert_id
        )
        if not int(touched):
            return "gone"
        return "waiting" if replicated is False else "replicated"

    async def claim(self, token: str, fence: int | None = None) -> Claimed:
        """Become the only instance that may take (see claim_many; this is one of them)."""
        [claimed] = await claim_many([(self.user_id, token)], self.redis, [fence])
        return claimed

    async def take(self, token: str, fence: fencing.Fence | None = None) -> Taken | str:
        """The head of the queue, now in flight; SUPERSEDED if ``token`` no longer owns the
        queue, or ``fence``'s lease token is stale; AWAY (nothing taken) if the user has no
        open tab."""
        presence = keys.presence_user(get_settings().TOPIC, self.user_id)
        fence_keys = fence.keys() if fence else [keys.fence_token(self.user_id), keys.fence_refused()]
        (alert, queued, previous), replicated = await run_script_replicated(
            self.redis,
            _TAKE,
            [self._key("owner"), self._key("queue"), self._key("inflight"), presence, *fence_keys],
            token,
            fence.arg() if fence else "",
        )
        if alert and _text(alert) == _FENCED:
            if fence is not None:
                fence.refused("alert take")
            return SUPERSEDED
        if alert and _text(alert) in (SUPERSEDED, AWAY):
            return _text(alert)
        return Taken(
            _decode(alert) if alert else None,
            int(queued),
            _decode(previous) if previous else None,
            replicated,
        )

    async def ack(self, alert_id: str, delivered: bool = True, fence: fencing.Fence | None = None) -> int:
        """Clear the in-flight slot (if it still holds ``alert_id``), count it if ``delivered``;
        returns the delivered count (-1: ``fence``'s token is stale, nothing changed)."""
        fence_keys = fence.keys() if fence else [keys.fence_token(self.user_id), keys.fence_refused()]
        done = int(
            await run_script(
                self.redis,
                _ACK,
                [self._key("inflight"), self._key("delivered"), *fence_keys],
                alert_id,
                "1" if delivered else "0",
                fence.arg() if fence else "",
            )
        )
        if done < 0 and fence is not None:
            fence.refused("alert ack")
        return done

    async def length(self) -> int:
        return int(await self.redis.llen(self._key("queue")))

    async def pending(self) -> list[Alert]:
        """Every queued alert, oldest first (the debug surfaces and tests; O(n))."""
        return [_decode(raw) for raw in await self.redis.lrange(self._key("queue"), 0, -1)]


async def claim_many(
    claims: list[tuple[str, str]],
    client: aioredis.Redis | None = None,
    fences: list[int | None] | None = None,
) -> list[Claimed]:
    """Claim the queues of many users, ``(user_id, token)`` each, in one script call;
    ``fences``: each claimer's lease token (None: not fenced)."""
    if not claims:
        return []
    names = ("owner", "inflight", "queue", "delivered")
    keys_ = []
    for user_id, _ in claims:
        keys_ += [*(keys.alerts(user_id, name) for name in names), keys.fence_token(user_id)]
    keys_.append(keys.fence_refused())
    args = []
    for i, (_, token) in enumerate(claims):
        args += [token, fencing.arg(fences[i] if fences else None)]
    rows = await run_script(client or get_redis(), _CLAIM, keys_, *args)
    return [
        Claimed(None, 0, 0, fenced=True)
        if int(queued) < 0
        else Claimed(_decode(stale) if stale else None, int(queued), int(delivered))
        for stale, queued, delivered in rows
    ]


async def lengths(user_ids: list[str], client: aioredis.Redis | None = None) -> list[int]:
    """The queue length of each user, in one pipelined round trip."""
    async with (client or get_redis()).pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.llen(keys.alerts(user_id, "queue"))
        return [int(n) for n in await pipe.execute()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(alert: Alert) -> str:
    return json.dumps(alert, separators=(",", ":"), ensure_ascii=False)


def _decode(raw: Any) -> Alert:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"alert is not a JSON object: {raw!r:.80}")
    return value

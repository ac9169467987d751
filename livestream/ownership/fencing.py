"""Fencing tokens, checked where a component's effects land (issue 19).

Every lease grant gives the user's manager a token larger than every earlier one for
that user (livestream/ownership/policy_lua.py ``grant``; docs/reliability.md says why it
stays larger across a failover). The worker hands it to the UserStreamManager, which sets
``component.token`` before each component's run(). Two kinds of effect are fenced:

**Writes to Redis.** A component's Redis write is a script that starts with
``fence_ok``: the write happens only if the user's current token (``fence:<user>``) is
the writer's, in the same atomic step; a stale token's write is refused, counted
(``fence-refused`` in Redis, ``REFUSED`` here) and logged once per component run::

    _SET_CHAT = fencing.script("chat.set", '''
    if not fence_ok(KEYS[2], ARGV[2], KEYS[3]) then return -1 end
    redis.call('SET', KEYS[1], ARGV[1])
    return 1
    ''')
    done = await run_script(get_redis(), _SET_CHAT, [key, *fence.keys()], value, fence.arg())
    if done == -1:
        fence.refused("chat state")

A token of None (a component run outside a worker: tests, tools) is not checked. A
missing ``fence:<user>`` (Redis lost its data; the owner's next renewal writes it back)
lets the write through: no later grant exists in this Redis to prefer.

**Effects outside Redis** (a relay process, a chat connection) cannot check a token, so
their owner stops them strictly before its lease can have lapsed anywhere:
``register_external_effect(user_id, stop)`` gives the lease keeper thread (which renews
whatever the worker's loop is doing) a ``stop`` to call, from that thread, once
EFFECT_STOP_MARGIN is all that is left of the lease its last renewal bought
(policy.effects_deadline), or at once when the lease is lost. ``may_act(user)`` says, right
before an action, whether that moment has passed: a worker frozen (SIGSTOP, a paused VM)
and woken up after its lease lapsed sees it has, before anything else runs; and a user
whose lease another worker took is closed here from the renewal that saw it until this
worker is granted the user again (the manager being stopped meanwhile acts no more: a
relay's retry in that window would be a second publisher on the stream key).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from livestream import keys, logformats
from livestream.conf import get_settings
from livestream.ownership.policy import effects_deadline
from livestream.redis import Script
from livestream.redis import script as declare

logger = logging.getLogger("livestream.fencing")

# fence_ok(token key, token, refused counter key): true if ``token`` is '' (not fenced),
# the user's current token, or no token is recorded; else counts the refusal.
FENCE = """
local function fence_ok(token_key, token, refused_key)
  if token == '' then return true end
  local current = redis.call('GET', token_key)
  if not current or current == token then return true end
  redis.call('INCR', refused_key)
  return false
end
"""

# Refused writes in this process, by component name.
REFUSED: Counter[str] = Counter()


def script(name: str, body: str) -> Script:
    """Declare a fenced script: ``body`` may call ``fence_ok`` (see the module docstring)."""
    return declare(name, FENCE + body)


def arg(token: int | None) -> str:
    """The token as a script argument ('' = not fenced)."""
    return "" if token is None else str(token)


@dataclass
class Fence:
    """One component run's token, with the keys and arguments its fenced scripts take."""

    user_id: str
    token: int | None
    owner: str  # the component's name, for the count and the log line
    logged: bool = field(default=False)

    def keys(self) -> list[str]:
        """KEYS a fenced script takes: the user's token, the refusal counter."""
        return [keys.fence_token(self.user_id), keys.fence_refused()]

    def arg(self) -> str:
        return arg(self.token)

    def refused(self, what: str) -> None:
        """A write of ours was refused: count it; the first of this run is logged."""
        REFUSED[self.owner] += 1
        if not self.logged:
            self.logged = True
            logger.warning(logformats.FENCE_REFUSED, self.user_id, self.owner, what, self.token)


# -- effects outside Redis ------------------------------------------------------------


class EffectGate:
    """This process' external effects and the moment they must have stopped (monotonic)."""

    def __init__(self) -> None:
        self.deadline = math.inf  # no lease keeper (not a worker): nothing to stop
        self._lock = threading.Lock()
        self._effects: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0
        self._listeners: list[Callable[[float], None]] = []
        # Users whose lease another worker holds now (written on the keeper's thread, read
        # on the loop's: set operations are atomic under the GIL).
        self._taken: set[str] = set()

    def open(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.deadline

    def open_for(self, user_id: str, now: float | None = None) -> bool:
        return user_id not in self._taken and self.open(now)

    def granted(self, user_id: str) -> None:
        """This worker holds ``user_id``'s lease again (a manager starts for them here)."""
        self._taken.discard(user_id)

    def deadline_wall(self) -> float:
        """The deadline on the wall clock (unix seconds), for an effect in a child process
        that must stop by itself when its parent is frozen (hand it on, refresh it)."""
        return time.time() + (self.deadline - time.monotonic())

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` reached Redis (the lease keeper's thread)."""
        conf = get_settings()
        self.deadline = effects_deadline(sent_at, conf.LEASE_TTL, conf.EFFECT_STOP_MARGIN)
        self._tell(self.deadline)

    def keeper_stopped(self) -> None:
        """The lease keeper stopped (its worker's managers are stopped): no deadline until
        another starts (several workers in one process, as the tests run them)."""
        self.deadline = math.inf
        self._tell(self.deadline)

    def on_renewed(self, callback: Callable[[float], None]) -> Callable[[], None]:
        """Have ``callback(deadline)`` called (on the lease keeper's thread) each time the
        deadline moves: after every renewal, and when the keeper stops (inf). For an effect
        in a child process that must stop by itself when this one is frozen (the relay
        warden, broadcast/warden.py). It must be quick and never block: it runs between
        two renewals. Returns a function that removes it."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    def _tell(self, deadline: float) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(deadline)
            except Exception:
                logger.exception("[PresenceManager] a deadline listener failed")

    def register(self, user_id: str, stop: Callable[[], None]) -> Callable[[], None]:
        """``stop`` (thread-safe, quick) ends an effect of ``user_id``; returns its unregister."""
        with self._lock:
            handle, self._next = self._next, self._next + 1
            self._effects[handle] = (user_id, stop)

        def unregister() -> None:
            with self._lock:
                self._effects.pop(handle, None)

        return unregister

    def stop(self, user_ids: Callable[[str], bool]) -> int:
        """Stop (and forget) the effects of every user ``user_ids`` selects; how many."""
        with self._lock:
            chosen = [h for h, (u, _) in self._effects.items() if user_ids(u)]
            stops = [self._effects.pop(h) for h in chosen]
        for user_id, stop in stops:
            try:
                stop()
            except Exception:
                logger.exception("[PresenceManager] external effect of %s did not stop cleanly", user_id)
        return len(stops)

    def expire(self, now: float | None = None) -> int:
        """Past the deadline: stop every effect (the lease keeper calls this)."""
        if self.open(now) or not self._effects:
            return 0
        stopped = self.stop(lambda _: True)
        if stopped:
            logger.warning(logformats.EFFECTS_STOPPED, stopped)
        return stopped

    def lost(self, user_ids: tuple[str, ...]) -> int:
        """Leases held by another worker now: their users' effects stop at once, and none
        starts again here until ``granted``."""
        if not user_ids:
            return 0
        self._taken.update(user_ids)
        return self.stop(set(user_ids).__contains__)


GATE = EffectGate()


def register_external_effect(user_id: str, stop: Callable[[], None]) -> Callable[[], None]:
    """Have ``stop()`` called (from the lease keeper's thread) before ``user_id``'s lease can
    lapse unrenewed, or when another worker holds it. Returns a function that unregisters
    it: call it when the effect ended by itself. ``stop`` must be quick and thread-safe
    (``Popen.kill``, ``loop.call_soon_threadsafe(task.cancel)``...)."""
    return GATE.register(user_id, stop)


def may_act(user_id: str | None = None) -> bool:
    """False once this process' leases may have lapsed, or (with ``user_id``) once another
    worker holds that user's: no effect outside Redis now."""
    return GATE.open() if user_id is None else GATE.open_for(user_id)

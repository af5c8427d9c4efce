"""Leases: at most one live delivery works on a part of a job (the whole job, a shard, the finish step).

A message can arrive twice while its first delivery is still running: a producer sent it again, or
the broker restored it (visibility timeout, a restored connection). The first delivery holds
``<prefix>job:<id>:lease:<part>`` (value ``host:pid:nonce``, a TTL of ``ETM_JOB_LEASE_SECONDS`` renewed
by a heartbeat thread); a second delivery that finds the lease held by a live process drops its
message without doing anything. A redelivery after a worker died takes over at once when the holder
was a process on this machine that no longer exists (a killed pool process), otherwise when the lease
expires, which is sooner than the broker's visibility timeout (checked by ``Settings``). A holder on
another machine cannot be checked: the delivery waits up to 1.5 TTLs for its lease to expire (the
holder died: a pool process killed there, its message taken here) before it calls the holder alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger("etm.worker")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0
"""


def _holder_state(holder: str) -> str:
    """``dead``: a process of this machine that no longer runs (or this process itself, whose earlier task
    ended without releasing); ``alive``: a running process of this machine; ``remote``: another machine's,
    which only the lease's expiry can tell about."""
    try:
        host, pid_text, _ = holder.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return "remote"
    if host != socket.gethostname():
        return "remote"
    if pid == os.getpid():
        return "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


class Lease:
    def __init__(self, client: redis.Redis, key: str, ttl: float) -> None:
        self.r, self.key, self.ttl_ms = client, key, max(1, int(ttl * 1000))
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, gone: Callable[[], bool] = lambda: False) -> str | None:
        """Take the lease; None when taken, else the live holder's token. A holder on another machine
        cannot be checked directly: wait until its lease expires (nobody renews a dead holder's lease) or
        has outlived 1.5 TTLs (it is renewed: alive), or until ``gone()`` says the work is not needed."""
        deadline = time.monotonic() + 1.5 * self.ttl_ms / 1000
        while True:
            if self.r.set(self.key, self.token, nx=True, px=self.ttl_ms):
                break
            raw = self.r.get(self.key)
            if raw is None:
                continue  # released or expired between the two calls
            holder = raw.decode()
            state = _holder_state(holder)
            if state == "alive":
                return holder
            if state == "dead":
                if self.r.eval(_TAKE_OVER, 1, self.key, holder, self.token, self.ttl_ms):
                    log.info("lease %s: took over from %s (that process is gone)", self.key, holder)
                    break
                continue
            if time.monotonic() > deadline or gone():
                return holder
            time.sleep(min(1.0, self.ttl_ms / 4000))
        self._thread = threading.Thread(target=self._heartbeat, name="etm-lease", daemon=True)
        self._thread.start()
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.r.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    log.warning("lease %s lost (expired while Redis was unreachable?)", self.key)
            except redis.RedisError as exc:
                log.warning("lease %s not renewed: %s", self.key, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.r.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError as exc:  # it expires by itself
            log.warning("lease %s not released: %s", self.key, exc)


@contextmanager
def hold(client: redis.Redis, key: str, ttl: float, gone: Callable[[], bool] = lambda: False) -> Iterator[bool]:
    """``with hold(...) as owned:`` owned is False when another live delivery holds the lease."""
    lease = Lease(client, key, ttl)
    holder = lease.acquire(gone)
    if holder is not None:
        log.warning("%s is held by %s: this delivery is a duplicate; dropping it without work", key, holder)
        yield False
        return
    try:
        yield True
    finally:
        lease.release()

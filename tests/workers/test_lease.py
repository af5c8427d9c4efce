"""Leases (workers/lease.py) against a real redis-server: a live holder keeps a second delivery out,
a dead local holder is taken over at once, a remote holder only when its lease expires, the heartbeat
keeps a long task's lease alive, and only the holder releases it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from tests.servicekit import RedisServer
from workers.lease import Lease, hold


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = RedisServer(tmp_path_factory.mktemp("lease") / "redis")
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


def test_second_delivery_is_kept_out_while_the_holder_lives(r: redis.Redis) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        r.set("k1", f"{socket.gethostname()}:{other.pid}:abc", px=10_000)  # a live process of this machine
        with hold(r, "k1", 10) as owned:
            assert owned is False
        assert r.get("k1").decode().endswith(":abc")  # untouched
    finally:
        other.kill()
        other.wait()
    # The same holder, now dead (a SIGKILLed pool process): the redelivery takes over at once.
    with hold(r, "k1", 10) as owned:
        assert owned is True
        assert r.get("k1").decode().split(":")[1] == str(os.getpid())
    assert r.get("k1") is None  # released at the end


def test_remote_holder_is_waited_out_until_its_lease_expires(r: redis.Redis) -> None:
    # A pool process killed on another machine: nobody renews its lease, so it expires and we take over.
    r.set("k2", "another-machine:4242:abc", px=400)
    t0 = time.monotonic()
    lease = Lease(r, "k2", 1.0)
    assert lease.acquire() is None
    assert 0.3 < time.monotonic() - t0 < 1.5
    lease.release()
    # A live holder there renews its lease: after 1.5 TTLs of waiting this delivery is the duplicate.
    remote = Lease(r, "k2", 0.6)
    remote.token = "another-machine:4242:def"
    assert remote.acquire() is None  # its heartbeat thread renews it
    t0 = time.monotonic()
    assert Lease(r, "k2", 0.6).acquire() == "another-machine:4242:def"
    assert 0.8 < time.monotonic() - t0 < 2.5
    # ...unless the work went away meanwhile (the job ended): then it stops waiting at once.
    t0 = time.monotonic()
    assert Lease(r, "k2", 60).acquire(gone=lambda: True) == "another-machine:4242:def"
    assert time.monotonic() - t0 < 0.5
    remote.release()


def test_heartbeat_keeps_the_lease_and_only_the_holder_releases(r: redis.Redis) -> None:
    lease = Lease(r, "k3", 0.6)
    assert lease.acquire() is None
    time.sleep(1.5)  # more than twice the TTL: alive only because the heartbeat renews it
    assert r.get("k3").decode() == lease.token
    intruder = Lease(r, "k3", 0.6)
    intruder.release()  # not its lease: nothing happens
    assert r.get("k3").decode() == lease.token
    lease.release()
    assert r.get("k3") is None


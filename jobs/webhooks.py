"""Job callbacks (webhooks): signed, retried with backoff, sent only to hosts the configuration allows.

- **Signed**: the body is the final job as ``GET /v1/jobs/{id}`` returns it (compact JSON); the header
  ``X-ETM-Signature: t=<unix time>,v1=<hex>`` carries HMAC-SHA256(``ETM_WEBHOOK_SECRET``,
  ``"<t>." + body``). Receivers recompute it and reject old ``t`` values, so a captured request cannot
  be replayed later (``verify_signature``).
- **Bounded**: one attempt, from connecting to the end of the answer, takes at most ``ETM_CALLBACK_TIMEOUT``
  seconds in total (a receiver trickling its answer is cut off there), and at most 64 KiB of the answer is read.
- **Retried**: network errors, 5xx and 429 are retried (``ETM_CALLBACK_ATTEMPTS``), waiting
  ``ETM_WEBHOOK_BACKOFF_SECONDS`` x 2^(attempt - 2), at most ``ETM_WEBHOOK_BACKOFF_MAX_SECONDS`` (a 429's
  Retry-After is honoured within that bound). Other answers end the delivery: a 4xx will not change by
  repeating the same request, and redirects are not followed (they could point anywhere).
- **Allowed hosts**: the host is resolved and refused when any address is private, loopback,
  link-local, multicast, reserved or otherwise not global, unless ``ETM_WEBHOOK_ALLOW_PRIVATE`` is set;
  with ``ETM_WEBHOOK_ALLOWED_HOSTS`` set, only the listed names and CIDRs are allowed. The API checks at
  submission (422), the worker again before every attempt (DNS may have changed) and then connects to
  the address it checked, not to a second lookup of the name (no DNS rebinding between check and
  connect); for https the certificate is still verified against the host name (SNI).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

import httpx

from etm.settings import Settings
from jobs.job_store import JobStore
from jobs.records import CallbackOutcome, JobRecord
from jobs.view import callback_body

log = logging.getLogger("etm.webhooks")

SIGNATURE_HEADER = "X-ETM-Signature"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(Exception):
    """The callback URL may not be called under this configuration; the message says what to change."""


@dataclass(frozen=True)
class Target:
    """A checked callback: the URL as given, its host and the addresses that passed the check."""

    url: httpx.URL
    host: str
    addresses: tuple[IPAddress, ...]


# -- signing ---------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-ETM-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver does: the signature matches and is at most ``tolerance`` seconds old."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), f"t={ts},v1={parts.get('v1', '')}")


# -- which hosts -----------------------------------------------------------------------------------


def _allow_list(settings: Settings) -> tuple[list[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    names, nets = [], []
    for entry in filter(None, (e.strip() for e in settings.webhook_allowed_hosts.split(","))):
        if "/" in entry:
            nets.append(ipaddress.ip_network(entry, strict=False))
        else:
            names.append(entry.lower().strip("[]"))
    return names, nets


def _name_listed(host: str, names: list[str]) -> bool:
    return any(host == n or (n.startswith(".") and host.endswith(n)) for n in names)


def _not_public(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    return None if ip.is_global else "non-global"


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackRefused(f"callback host {host!r} cannot be resolved ({exc}); check the callback_url") from exc
    # scope ids (fe80::1%eth0) are dropped: such addresses are link-local and refused anyway
    return tuple(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def check_callback_url(url: str, settings: Settings) -> Target:
    """Resolve ``url``'s host and check it against the configuration; raises ``CallbackRefused``."""
    if settings.webhook_secret is None:
        raise CallbackRefused(
            "callbacks are signed with ETM_WEBHOOK_SECRET, which this service does not have; an operator must "
            "set it (and share it with the receiver), or submit the job without callback_url"
        )
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CallbackRefused(f"callback_url {url!r} is not a valid URL ({exc})") from exc
    if u.scheme not in ("http", "https") or not u.host:
        raise CallbackRefused(f"callback_url {url!r} must be an http:// or https:// URL with a host")
    host = u.host.lower()
    addresses = _resolve(host, u.port or (443 if u.scheme == "https" else 80))
    names, nets = _allow_list(settings)
    if names or nets:
        if _name_listed(host, names) or all(any(ip in n for n in nets) for ip in addresses):
            return Target(u, host, addresses)
        raise CallbackRefused(
            f"callback host {host!r} ({', '.join(map(str, addresses))}) is not in ETM_WEBHOOK_ALLOWED_HOSTS "
            f"({settings.webhook_allowed_hosts}); use a listed host or ask an operator to add it"
        )
    if not settings.webhook_allow_private:
        for ip in addresses:
            reason = _not_public(ip)
            if reason:
                raise CallbackRefused(
                    f"callback host {host!r} resolves to {ip}, a {reason} address; callbacks go only to public "
                    "addresses unless an operator sets ETM_WEBHOOK_ALLOWED_HOSTS (host names or CIDRs) or "
                    "ETM_WEBHOOK_ALLOW_PRIVATE=true"
                )
    return Target(u, host, addresses)


# -- delivery --------------------------------------------------------------------------------------


def backoff(settings: Settings, attempt: int, retry_after: str | None = None) -> float:
    """Seconds to wait before attempt ``attempt`` (2, 3, ...)."""
    delay = settings.webhook_backoff_seconds * 2 ** (attempt - 2)
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, float(retry_after))
    return min(delay, settings.webhook_backoff_max_seconds)


class DeadlineExceeded(httpx.TimeoutException):
    """An attempt did not end within its total deadline (ETM_CALLBACK_TIMEOUT)."""


MAX_ANSWER_BYTES = 64 * 1024  # of the receiver's answer body read (only its status matters)


def _post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST to the checked address itself, with the original Host header (and SNI name for https), within a
    total deadline of ``timeout`` seconds for the whole exchange: connect, send, the answer's status line, headers
    and body (httpx's own timeouts are per read, which a receiver sending a byte now and then never trips).

    Raises:
        DeadlineExceeded: no complete answer within ``timeout`` seconds.
        httpx.HTTPError: the exchange failed otherwise.
    """
    return asyncio.run(_post_async(target, body, headers, timeout))


async def _post_async(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    ip = target.addresses[0]
    url = target.url.copy_with(host=str(ip))
    host_header = target.url.netloc.decode("ascii").rsplit("@", 1)[-1]
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                request = client.build_request("POST", url, content=body, headers={**headers, "Host": host_header})
                request.extensions.update(extensions)
                resp = await client.send(request, stream=True)
                try:
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read > MAX_ANSWER_BYTES:
                            break
                finally:
                    await resp.aclose()
                return resp
    except TimeoutError as exc:
        raise DeadlineExceeded(
            f"the receiver sent no complete answer within {timeout:g} s (ETM_CALLBACK_TIMEOUT, the deadline of one "
            "attempt)"
        ) from exc


def deliver(settings: Settings, jobs: JobStore, job: JobRecord) -> CallbackOutcome:
    """POST the final job to its callback_url; record and return the outcome."""
    assert job.callback_url is not None
    body = callback_body(job)
    outcome = CallbackOutcome(attempts=0)
    retry_after: str | None = None
    for attempt in range(1, settings.callback_attempts + 1):
        if attempt > 1:
            delay = backoff(settings, attempt, retry_after)
            outcome.delays_seconds.append(round(delay, 3))
            time.sleep(delay)
        outcome.attempts = attempt
        try:
            target = check_callback_url(job.callback_url, settings)
        except CallbackRefused as exc:  # configuration or DNS said no: repeating will not help
            outcome.error = str(exc)
            break
        assert settings.webhook_secret is not None  # checked above
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "explain-to-me-webhook/1",
            SIGNATURE_HEADER: sign(settings.webhook_secret.get_secret_value(), int(time.time()), body),
            "X-ETM-Job": job.id,
            "X-ETM-Attempt": str(attempt),
        }
        try:
            resp = _post(target, body, headers, settings.callback_timeout)
        except httpx.HTTPError as exc:
            outcome.status_code, outcome.error = None, f"{type(exc).__name__}: {exc}"
            continue
        outcome.status_code, outcome.error = resp.status_code, None
        if resp.is_success:
            outcome.delivered = True
            break
        outcome.error = f"the receiver answered {resp.status_code}"
        if resp.status_code < 500 and resp.status_code != 429:
            break
        retry_after = resp.headers.get("Retry-After")
    level = logging.INFO if outcome.delivered else logging.WARNING
    log.log(level, "job %s: callback %s after %d attempt(s): %s", job.id,
            "delivered" if outcome.delivered else "not delivered", outcome.attempts,
            outcome.status_code or outcome.error)
    jobs.set_fields(job.id, callback=outcome)
    jobs.snapshot(job.id)
    return outcome

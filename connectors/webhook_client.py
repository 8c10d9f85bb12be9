"""One webhook endpoint as a client sees it: Standard Webhooks signatures and one kept-alive connection.

Receivers verify deliveries with the `standardwebhooks` or `svix` libraries:
`webhook-id` is the alert id (the same on every attempt, so receivers can
deduplicate on it), `webhook-timestamp` the unix seconds of the attempt, and
`webhook-signature` is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
keyed with the base64 secret after its `whsec_` prefix.

The HTTP client is urllib3: a pooled connection kept alive between
deliveries (one TCP and TLS handshake per endpoint, not one per alert),
separate connect and read timeouts, the system's CA store (and
`SSL_CERT_FILE`), and the proxy variables (`HTTPS_PROXY`, `NO_PROXY`) read
with the standard library's own rules. Chosen over httpx, the other well-kept
option: the sender is a thread in the engine's process, sharing its
interpreter lock with ingestion, and on the same machine urllib3 spent about
a third of httpx's CPU per request (`bench/webhook.py`); it also has no
dependencies of its own. Redirects are never followed: a signed alert goes
only where it was configured to go.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, urlsplit
from urllib.request import getproxies, proxy_bypass

import urllib3

from ringwatch.runtime.errors import RingwatchError

SECRET_PREFIX = "whsec_"
USER_AGENT = "ringwatch-webhook"


class InvalidWebhookConfigError(RingwatchError, ValueError):
    """A webhook URL, secret or retry setting that cannot work; the message names it."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional, as in the reference libraries)."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhookConfigError(
            "webhook secret: expected 'whsec_' followed by base64, e.g. whsec_" +
            base64.b64encode(b"32 random bytes go here.........").decode()
        ) from None
    if not key:
        raise InvalidWebhookConfigError("webhook secret: empty key after 'whsec_'")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery attempt."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def check_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host and a valid port; else the error names it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidWebhookConfigError(f"webhook url: {exc} in {url!r}") from None
    if any(c.isspace() for c in url):
        raise InvalidWebhookConfigError(f"webhook url: contains whitespace (percent-encode it) in {url!r}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhookConfigError(f"webhook url: expected http(s)://host[:port]/path, got {url!r}")
    return url


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: `retry` says whether trying again can help; `wait_s` is a Retry-After."""

    delivered: bool
    reason: str = ""
    retry: bool = False
    wait_s: float | None = None


class WebhookClient:
    """Posts signed alerts to one endpoint over a kept-alive connection; one request at a time.

    `post` never raises for what the endpoint or the network does: every
    answer, timeout or connection failure becomes an `Outcome`.
    """

    def __init__(self, url: str, secret: str, *, timeout_s: float = 10.0):
        self.url = check_url(url)
        self._key = decode_secret(secret)
        if timeout_s <= 0:
            raise InvalidWebhookConfigError(f"timeout_s: must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._headers = {"user-agent": USER_AGENT, "content-type": "application/json"}
        options = {"timeout": urllib3.Timeout(connect=timeout_s, read=timeout_s), "retries": False, "maxsize": 1,
                   "block": True}
        proxy = _proxy_for(urlsplit(url))
        self._http = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)

    def post(self, message_id: str, body: bytes) -> Outcome:
        """One signed attempt; the signature's timestamp is the moment of this attempt."""
        timestamp = int(time.time())
        headers = {**self._headers, "webhook-id": message_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(self._key, message_id, timestamp, body)}
        try:
            response = self._http.request("POST", self.url, body=body, headers=headers, redirect=False)
        except urllib3.exceptions.TimeoutError:
            return Outcome(False, f"timeout after {self.timeout_s} s", retry=True)
        except urllib3.exceptions.HTTPError as exc:
            return Outcome(False, f"connection error: {type(exc).__name__}: {exc}", retry=True)
        return classify(response.status, response.headers.get("retry-after"))

    def close(self) -> None:
        self._http.clear()

    def __enter__(self) -> "WebhookClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _proxy_for(parts: SplitResult) -> str | None:
    """The proxy the environment names for this URL's scheme, unless NO_PROXY exempts its host."""
    proxy = getproxies().get(parts.scheme)
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def classify(status: int, retry_after: str | None) -> Outcome:
    """2xx delivered; 5xx, 429 and 408 worth retrying; anything else (redirects included) refused."""
    if 200 <= status < 300:
        return Outcome(True)
    if status >= 500 or status in (408, 429):
        return Outcome(False, f"HTTP {status}", retry=True, wait_s=retry_after_s(retry_after))
    return Outcome(False, f"HTTP {status} (not retried{'; redirects are not followed' if 300 <= status < 400 else ''})")


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


@dataclass
class Backoff:
    """Exponential backoff with equal jitter (half fixed, half random), capped at `max_s`.

    `delay_s(failures, outcome)` also honours a Retry-After, up to `retry_after_max_s`.
    """

    initial_s: float = 0.5
    max_s: float = 60.0
    retry_after_max_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("initial_s", "max_s"):
            if getattr(self, name) <= 0:
                raise InvalidWebhookConfigError(f"backoff_{name}: must be > 0, got {getattr(self, name)}")
        self._random = random.Random()

    def delay_s(self, failures: int, outcome: Outcome | None = None) -> float:
        ceiling = min(self.max_s, self.initial_s * 2 ** min(failures - 1, 62))
        delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
        if outcome is not None and outcome.wait_s is not None:
            delay = max(delay, min(outcome.wait_s, self.retry_after_max_s))
        return delay

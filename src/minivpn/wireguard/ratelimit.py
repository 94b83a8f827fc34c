"""Per-source rate limiting of handshake messages under load.

Handshake messages cost a Curve25519 computation each, so a flood of them can burn the CPU.
When the device is "under load", WireGuard first demands a cookie (a valid mac2, which proves the
sender can receive at its source address), and then admits at most :data:`PACKETS_PER_SECOND`
handshakes per second from each source address, with bursts of up to :data:`PACKETS_BURSTABLE`.

The algorithm is a token bucket per source IP, counted in nanoseconds as the kernel and
wireguard-go do (``ratelimiter/ratelimiter.go``, ``wireguard-linux-compat:src/ratelimiter.c``):

* a packet costs ``1 s / 20`` = 50 ms worth of tokens;
* a bucket holds at most ``5 x 50 ms`` = 250 ms worth (the burst);
* time passing refills the bucket one nanosecond per nanosecond;
* a new source starts with a full bucket and pays for its first packet at once.

The key is the source *IP address* (the bytes of it, 4 or 16), not the port, so one host cannot
dodge the limit by changing ports.  Like wireguard-go, an IPv6 source is keyed by its full 128
bits; the kernel keys IPv6 by the /64 instead.  Callers wanting that pass ``address[:8]``.

Idle buckets are garbage-collected: an entry not touched for more than a second has refilled
to the full burst (1 s of refill is 20 packets' worth), so forgetting it changes nothing: a new
entry starts full too.  Collection runs at most once a second, from inside :meth:`allow` (or by
calling :meth:`collect`), so no timer is needed.  The number of entries is capped like the
kernel's table (``max_entries``): when full, packets from new sources are refused, which bounds
memory under a flood of spoofed source addresses.

The same buckets limit the cookie replies we send under load (:class:`CookieReplyLimiter`):
each costs about 50 us of CPU, so a flood of initiations must not buy one per message.  A source
gets as many cookie replies as handshakes (20 a second), and all sources together
:data:`COOKIE_REPLIES_PER_SECOND`; a message refused a cookie reply is dropped and counted.

Time is injected (``now`` in seconds, from a monotonic clock) so the tests can use a fake clock.
"""

from __future__ import annotations

__all__ = [
    "COOKIE_REPLIES_BURSTABLE",
    "COOKIE_REPLIES_PER_SECOND",
    "GC_INTERVAL",
    "PACKETS_BURSTABLE",
    "PACKETS_PER_SECOND",
    "CookieReplyLimiter",
    "RateLimiter",
]

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
#: Cookie replies per second to all sources together, and the burst (a cookie reply costs about
#: 50 us of CPU: 1000 a second are 5% of the thread).
COOKIE_REPLIES_PER_SECOND = 1000
COOKIE_REPLIES_BURSTABLE = 100
#: Seconds between garbage collections; also the idle time after which an entry is dropped.
GC_INTERVAL = 1.0

_NS_PER_SECOND = 1_000_000_000
_GC_INTERVAL_NS = round(GC_INTERVAL * _NS_PER_SECOND)


class _Bucket:
    """Tokens (in nanoseconds of refill) of one source, and when they were last updated."""

    __slots__ = ("last_ns", "tokens_ns")

    def __init__(self, last_ns: int, tokens_ns: int) -> None:
        self.last_ns = last_ns
        self.tokens_ns = tokens_ns


class RateLimiter:
    """Token buckets keyed by source IP address.

    Args:
        max_entries: the most sources tracked at once; packets from further new sources are
            refused until idle entries are collected.  65536 is the kernel's limit on machines
            with more than 1 GiB of memory.
        packets_per_second: the steady rate each source is allowed.
        burst: how many packets a source that was quiet may send at once.
    """

    def __init__(
        self,
        max_entries: int = 65536,
        *,
        packets_per_second: int = PACKETS_PER_SECOND,
        burst: int = PACKETS_BURSTABLE,
    ) -> None:
        # Forgetting a bucket idle for GC_INTERVAL must be the same as keeping it: it has refilled.
        if burst > packets_per_second * GC_INTERVAL:
            raise ValueError("a burst must refill within GC_INTERVAL")
        self.max_entries = max_entries
        self._cost_ns = _NS_PER_SECOND // packets_per_second
        self._max_tokens_ns = self._cost_ns * burst
        self._buckets: dict[bytes, _Bucket] = {}
        self._next_collect_ns: int | None = None

    def allow(self, src_ip: bytes, now: float) -> bool:
        """Charge one packet to *src_ip*; True if it may be processed.

        Args:
            src_ip: the source address bytes (4 for IPv4, 16 for IPv6); any bytes work as a key.
            now: the current time in seconds (monotonic clock).

        Returns:
            True if the source had a packet's worth of tokens left.
        """
        now_ns = round(now * _NS_PER_SECOND)
        if self._next_collect_ns is None or now_ns >= self._next_collect_ns:
            self._collect_ns(now_ns)
        bucket = self._buckets.get(src_ip)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                return False
            self._buckets[src_ip] = _Bucket(now_ns, self._max_tokens_ns - self._cost_ns)
            return True
        # A clock that went backwards refills nothing (max with 0) instead of draining tokens.
        elapsed = max(0, now_ns - bucket.last_ns)
        tokens = min(self._max_tokens_ns, bucket.tokens_ns + elapsed)
        bucket.last_ns = now_ns
        if tokens >= self._cost_ns:
            bucket.tokens_ns = tokens - self._cost_ns
            return True
        bucket.tokens_ns = tokens
        return False

    def collect(self, now: float) -> None:
        """Forget sources idle for more than :data:`GC_INTERVAL` seconds.

        :meth:`allow` calls this itself about once a second; calling it more often is harmless.
        """
        self._collect_ns(round(now * _NS_PER_SECOND))

    def __len__(self) -> int:
        """The number of sources currently tracked."""
        return len(self._buckets)

    def _collect_ns(self, now_ns: int) -> None:
        idle = [
            src
            for src, bucket in self._buckets.items()
            if now_ns - bucket.last_ns > _GC_INTERVAL_NS
        ]
        for src in idle:
            del self._buckets[src]
        self._next_collect_ns = now_ns + _GC_INTERVAL_NS


class CookieReplyLimiter:
    """Whether a cookie reply may go to a source: its own bucket, then the one for everyone.

    A source over its own rate does not use up the shared bucket, so one flooding host cannot
    keep the others from getting their cookies.
    """

    def __init__(self) -> None:
        self._per_source = RateLimiter()
        self._overall = RateLimiter(
            1, packets_per_second=COOKIE_REPLIES_PER_SECOND, burst=COOKIE_REPLIES_BURSTABLE
        )

    def allow(self, src_ip: bytes, now: float) -> bool:
        """Charge one cookie reply to *src_ip* (address bytes); True if it may be sent."""
        return self._per_source.allow(src_ip, now) and self._overall.allow(b"", now)

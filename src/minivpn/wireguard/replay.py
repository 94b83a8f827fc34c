"""Anti-replay protection for transport data: the RFC 6479 sliding window.

Every transport data message carries a 64-bit counter (the AEAD nonce).  An attacker who
records a datagram can send it again; the AEAD still authenticates it, so the receiver must
remember which counters it has already accepted and refuse repeats.  UDP also reorders packets,
so "only accept counters larger than the last one" would drop legitimate traffic.  The compromise
is a *window*: remember the last :data:`WINDOW_SIZE` counters below the highest one seen, accept
each of those at most once, and refuse anything older.

RFC 6479 stores the window as a ring of machine words ("blocks").  Bit ``c % 64`` of block
``(c // 64) % 128`` records whether counter ``c`` was seen.  When a newer counter arrives, the
window slides forward by whole blocks: the blocks between the old and the new highest counter are
zeroed (at most the whole ring), which is cheaper than shifting a big bitmap bit by bit.  One
block is kept as slack so that the block being refilled never overlaps the window, which is why
the window is ``(128 - 1) * 64 = 8128`` counters and not 8192.  WireGuard's kernel module and
wireguard-go use exactly these numbers (``replay/replay.go``,
``wireguard-linux-compat:src/receive.c counter_validate``).

The exact acceptance rule, which the tests check against a model that is just a set of seen
counters, is: with ``last`` the highest counter accepted so far (0 initially), a counter ``c`` is
accepted if and only if ``c < limit``, ``c`` was not accepted before, and ``c >= last - 8128``.
The ring remembers whole blocks, so it could tell apart counters up to 8191 behind; the explicit
distance check makes the boundary exact to the counter rather than to the block.

Call :meth:`ReplayFilter.check_and_update` **only after the AEAD tag was verified**.  Updating
the window with the counter of a forged packet would let anyone move the window far ahead and make
every genuine packet "too old" (a one-datagram denial of service).
"""

from __future__ import annotations

from minivpn.wireguard.constants import REJECT_AFTER_MESSAGES

__all__ = [
    "RING_BLOCKS",
    "WINDOW_SIZE",
    "ReplayFilter",
]

#: Bits per ring block (RFC 6479's word size; wireguard-go uses 64 on every platform).
_BLOCK_BITS_LOG = 6
_BLOCK_BIT_MASK = (1 << _BLOCK_BITS_LOG) - 1
#: Number of blocks in the ring; a power of two so that "modulo" is a mask.
RING_BLOCKS = 128
_RING_MASK = RING_BLOCKS - 1
#: How far behind the highest accepted counter a counter may be and still be accepted.
WINDOW_SIZE = (RING_BLOCKS - 1) << _BLOCK_BITS_LOG  # 8128


class ReplayFilter:
    """Remembers which transport counters of one receiving keypair were already accepted.

    One filter belongs to one keypair (each session's counters start again at 0), and it is not
    thread-safe; the sans-IO core is single-threaded.

    Example::

        plaintext = decrypt(...)          # raises if the tag is wrong
        if not keypair.replay.check_and_update(counter):
            return                        # a replay, or too old: drop silently
    """

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * RING_BLOCKS

    def reset(self) -> None:
        """Forget every counter, as for a fresh keypair."""
        self._last = 0
        self._ring = [0] * RING_BLOCKS

    def check_and_update(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """Decide whether *counter* is fresh, and if so remember it.

        Call this only AFTER decryption succeeded: the counter of an unauthenticated packet
        must never move the window (see the module docstring).

        Args:
            counter: the message's counter (an unsigned 64-bit value from the wire).
            limit: counters at or above this are refused without touching the state.

        Returns:
            True if the counter was not seen before and is inside the window (the packet is
            to be accepted); False for a replay, a counter too far behind, or one over *limit*.
        """
        if not 0 <= counter < limit:
            return False
        ring = self._ring
        block = counter >> _BLOCK_BITS_LOG
        last = self._last
        if counter > last:
            # Slide the window forward: zero the blocks between the old highest counter's block
            # (exclusive) and the new one's (inclusive).  They hold bits of counters that are now
            # out of the window, or nothing at all.  In order, 63 counters in 64 stay in the
            # same block: testing for that first skips building a range (-0.1 us a packet).
            current = last >> _BLOCK_BITS_LOG
            if block != current:
                if block - current >= RING_BLOCKS:
                    self._ring = ring = [0] * RING_BLOCKS
                else:
                    for index in range(current + 1, block + 1):
                        ring[index & _RING_MASK] = 0
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        index = block & _RING_MASK
        bit = 1 << (counter & _BLOCK_BIT_MASK)
        word = ring[index]
        if word & bit:
            return False
        ring[index] = word | bit
        return True

"""WireGuard's protocol constants: the times, counts and sizes every implementation shares.

They follow wireguard-go's ``device/constants.go`` (and the paper, section 6), so a peer running
minivpn rekeys, gives up and pads exactly when a peer running wireguard-go would.  The timers
that use them are in :mod:`minivpn.wireguard.timers`; the checks made as packets go by in
:mod:`~minivpn.wireguard.keypair`, :mod:`~minivpn.wireguard.send` and
:mod:`~minivpn.wireguard.receive`.  Sizes of the messages themselves are in
:mod:`~minivpn.wireguard.messages`.

Times are in seconds, on the monotonic clock the runtime passes in as ``now``.
"""

from __future__ import annotations

__all__ = [
    "COOKIE_REFRESH_TIME",
    "DEFAULT_MTU",
    "HANDSHAKE_INITIATION_RATE",
    "KEEPALIVE_TIMEOUT",
    "MAX_PEERS",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "PADDING_MULTIPLE",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_ON_RECEIVE_AFTER_TIME",
    "REKEY_TIMEOUT",
    "REKEY_TIMEOUT_JITTER_MAX",
    "UNDER_LOAD_AFTER_TIME",
    "ZERO_KEY_MATERIAL_AFTER",
]

# --- messages per keypair -------------------------------------------------------------------------

#: A sender starts a new handshake once its keypair has sent this many messages.
REKEY_AFTER_MESSAGES = 1 << 60
#: Counters at or above this are never accepted (``RejectAfterMessages = 2**64 - 2**13 - 1``);
#: a keypair must be replaced long before.
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1

# --- the age of a keypair and of a handshake ------------------------------------------------------

#: The initiator starts a new handshake when its keypair is older than this (seconds).
REKEY_AFTER_TIME = 120.0
#: A keypair older than this is never used again, for sending or receiving (seconds).
REJECT_AFTER_TIME = 180.0
#: How long we keep retrying a handshake before giving up (seconds).
REKEY_ATTEMPT_TIME = 90.0
#: How long we wait for a response before sending the initiation again (seconds); also the
#: shortest interval between two initiations to the same peer.
REKEY_TIMEOUT = 5.0
#: A random extra delay, up to this (seconds), is added to handshake timers so that two peers
#: do not keep retrying in lockstep (wireguard-go adds 0 to 333 ms).
REKEY_TIMEOUT_JITTER_MAX = 0.334
#: Retries of one handshake before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
#: After receiving data, we send a keepalive if we have sent nothing for this long (seconds).
KEEPALIVE_TIMEOUT = 10.0
#: The initiator starts a new handshake when it *receives* under a keypair this old (seconds),
#: so that a peer that only listens still gets new keys before the old ones expire.
REKEY_ON_RECEIVE_AFTER_TIME = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
#: Keys are erased after this long without a new session (seconds).
ZERO_KEY_MATERIAL_AFTER = 3 * REJECT_AFTER_TIME
#: A responder accepts at most one initiation per peer in this many seconds.
HANDSHAKE_INITIATION_RATE = 1 / 50
#: Seconds a cookie secret (responder) and a received cookie (initiator) stay valid.
COOKIE_REFRESH_TIME = 120.0
#: The "under load" state lasts this long after the runtime last saw a handshake backlog.
UNDER_LOAD_AFTER_TIME = 1.0

# --- sizes and limits -----------------------------------------------------------------------------

#: Plaintexts are padded with zeros to a multiple of this many bytes (capped at the MTU).
PADDING_MULTIPLE = 16
#: The MTU of a WireGuard interface unless configured otherwise (1500 minus 80 of overhead).
DEFAULT_MTU = 1420
#: Packets kept per peer while waiting for a handshake (wireguard-go QueueStagedSize).
MAX_STAGED_PACKETS = 128
#: The most peers one device holds (wireguard-go MaxPeers).
MAX_PEERS = 1 << 16

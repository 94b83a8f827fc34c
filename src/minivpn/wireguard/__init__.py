"""WireGuard, as a sans-IO protocol core: bytes and clock values in, bytes and events out.

Nothing in this package opens a socket, a device or a file (except :func:`load_config`), reads
a clock on its own, or imports trio: the runtime (:mod:`minivpn.runtime`) does the I/O and
passes datagrams, packets and times in.  That keeps the protocol testable with fake clocks and
in-memory networks, and readable on its own.  ``docs/wireguard.md`` walks through it message by
message.

The modules, from the bottom up:

* :mod:`~minivpn.wireguard.keys`: Curve25519 private/public keys and preshared keys.
* :mod:`~minivpn.wireguard.crypto`: the primitives (BLAKE2s, HKDF, ChaCha20-Poly1305,
  XChaCha20-Poly1305, X25519) and :class:`TransportCipher` for data messages.
* :mod:`~minivpn.wireguard.tai64n`: the timestamps that make replayed initiations detectable.
* :mod:`~minivpn.wireguard.messages`: the four message formats.
* :mod:`~minivpn.wireguard.noise`: the Noise IKpsk2 handshake.
* :mod:`~minivpn.wireguard.cookie`: mac1, mac2 and cookie replies.
* :mod:`~minivpn.wireguard.replay`: the RFC 6479 anti-replay window.
* :mod:`~minivpn.wireguard.ratelimit`: per-source handshake rate limiting under load.
* :mod:`~minivpn.wireguard.allowedips`: cryptokey routing.
* :mod:`~minivpn.wireguard.keypair`: sessions, their current/previous/next slots, the index
  table.
* :mod:`~minivpn.wireguard.timers`: the protocol's constants and per-peer timers.
* :mod:`~minivpn.wireguard.peer`: what the device knows about one peer.
* :mod:`~minivpn.wireguard.events`: the actions and events the core returns.
* :mod:`~minivpn.wireguard.core`: :class:`WireGuardCore`, the state machine tying it together.
* :mod:`~minivpn.wireguard.config`: ``wg``/``wg-quick`` configuration files.
* :mod:`~minivpn.wireguard.uapi`: the text protocol ``wg`` speaks to a userspace daemon.
* :mod:`~minivpn.wireguard.errors`: the exceptions.
"""

from __future__ import annotations

from .allowedips import AllowedIPs as AllowedIPs
from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import format_config as format_config
from .config import load_config as load_config
from .config import parse_config as parse_config
from .core import MAX_DATAGRAM_SIZE as MAX_DATAGRAM_SIZE
from .core import TRANSPORT_OVERHEAD as TRANSPORT_OVERHEAD
from .core import WireGuardCore as WireGuardCore
from .core import padded_size as padded_size
from .crypto import TransportCipher as TransportCipher
from .errors import DecryptionError as DecryptionError
from .errors import HandshakeError as HandshakeError
from .errors import InvalidKey as InvalidKey
from .errors import InvalidMessage as InvalidMessage
from .errors import WireGuardError as WireGuardError
from .events import Action as Action
from .events import DeliverPacket as DeliverPacket
from .events import DropReason as DropReason
from .events import Endpoint as Endpoint
from .events import FwmarkChanged as FwmarkChanged
from .events import HandshakeCompleted as HandshakeCompleted
from .events import HandshakeFailed as HandshakeFailed
from .events import KeyMaterialZeroed as KeyMaterialZeroed
from .events import ListenPortChanged as ListenPortChanged
from .events import PacketDropped as PacketDropped
from .events import SendDatagram as SendDatagram
from .keys import PresharedKey as PresharedKey
from .keys import PrivateKey as PrivateKey
from .keys import PublicKey as PublicKey
from .peer import Peer as Peer
from .timers import DEFAULT_MTU as DEFAULT_MTU
from .timers import UNDER_LOAD_AFTER_TIME as UNDER_LOAD_AFTER_TIME
from .uapi import DeviceSnapshot as DeviceSnapshot
from .uapi import GetRequest as GetRequest
from .uapi import PeerSnapshot as PeerSnapshot
from .uapi import SetRequest as SetRequest
from .uapi import UapiError as UapiError
from .uapi import UapiRequestParser as UapiRequestParser
from .uapi import format_errno as format_errno
from .uapi import format_get_response as format_get_response
from .uapi import parse_get_response as parse_get_response

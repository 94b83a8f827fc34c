"""WireGuard, as a sans-IO protocol core: bytes and clock values in, bytes and events out.

Nothing in this package opens a socket, a device or a file (except :func:`load_config`), reads
a clock on its own, or imports trio: the runtime (:mod:`minivpn.runtime`) does the I/O and
passes datagrams, packets and times in.  That keeps the protocol testable with fake clocks and
in-memory networks, and readable on its own.  ``docs/wireguard.md`` walks through it message by
message.

The modules, from the bottom up:

* :mod:`~minivpn.wireguard.constants`: the protocol's times, counts and sizes
  (wireguard-go's ``device/constants.go``).
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
* :mod:`~minivpn.wireguard.timers`: the five per-peer timers and the device's wake-up heap.
* :mod:`~minivpn.wireguard.peer`: what the device knows about one peer.
* :mod:`~minivpn.wireguard.results`: what ``encapsulate`` and ``decapsulate`` return.
* :mod:`~minivpn.wireguard.events`: the other actions and events the core returns.
* :mod:`~minivpn.wireguard.device`: the state of one device, shared by the two paths.
* :mod:`~minivpn.wireguard.send`: the way out, ``encapsulate``.
* :mod:`~minivpn.wireguard.receive`: the way in, ``decapsulate``.
* :mod:`~minivpn.wireguard.core`: :class:`WireGuardCore`, the state machine tying it together.
* :mod:`~minivpn.wireguard.config`: ``wg``/``wg-quick`` configuration files.
* :mod:`~minivpn.wireguard.uapi`: the text protocol ``wg`` speaks to a userspace daemon.
* :mod:`~minivpn.wireguard.errors`: the exceptions.

Names are imported from the module that defines them (``from minivpn.wireguard.core import
WireGuardCore``); the package re-exports nothing, so that a program loads only the modules it
uses, and every module loaded stays resident (docs/performance.md, "Memory of minivpnd").
``minivpnd`` does load every module above, the configuration file parser included: the core
imports it for :meth:`WireGuardCore.from_config`.
"""

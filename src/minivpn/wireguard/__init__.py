"""WireGuard, as a sans-IO protocol core: bytes and clock values in, bytes and events out."""

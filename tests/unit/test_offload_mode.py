"""MINIVPN_OFFLOAD: which data path an interface runs (runtime/vpn.py)."""

from __future__ import annotations

import pytest

from minivpn.runtime.vpn import DEFAULT_OFFLOAD, OffloadMode, VpnError, offload_mode


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("off", OffloadMode.OFF),
        ("batch", OffloadMode.BATCH),
        ("TSO ", OffloadMode.TSO),
        ("", DEFAULT_OFFLOAD),
    ],
)
def test_the_variable_names_the_mode(
    monkeypatch: pytest.MonkeyPatch, value: str, mode: OffloadMode
) -> None:
    monkeypatch.setenv("MINIVPN_OFFLOAD", value)
    assert offload_mode() is mode


def test_unset_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIVPN_OFFLOAD", raising=False)
    assert offload_mode() is DEFAULT_OFFLOAD is OffloadMode.BATCH


def test_anything_else_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIVPN_OFFLOAD", "fast")
    with pytest.raises(VpnError, match=r"MINIVPN_OFFLOAD='fast': expected one of off, batch, tso"):
        offload_mode()

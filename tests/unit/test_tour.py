"""docs/tour.md names only files, functions and classes that exist, and each stop links some.

The tour names code as ``file:function`` (``tuntap/aio.py:TunDevice.read``), in links into
``../src/minivpn/`` or in backticks, and files alone as ``runtime/sticky.py``.  Files are
relative to ``src/minivpn/``; a name is looked up in the imported module, attribute by
attribute, so a renamed method breaks this test rather than the tour.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOUR = REPO_ROOT / "docs" / "tour.md"
SOURCE = REPO_ROOT / "src" / "minivpn"

#: The stops, in the order of the steps that built minivpn.
STOPS = [
    "A temporary TUN device, and a ping's ICMP",
    "The device manager",
    "The plain tunnel",
    "The WireGuard handshake",
    "One packet, through encryption and back",
    "The nursery of a running interface",
]

_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
_CODE_REFERENCE = re.compile(r"`((?:[a-z_]+/)*[a-z_]+\.py):([A-Za-z_][\w.]*)`")
_FILE_REFERENCE = re.compile(r"`((?:[a-z_]+/)*[a-z_]+\.py)`")


def tour_text() -> str:
    return TOUR.read_text()


def sections() -> dict[str, str]:
    """The text of each ``## `` section, by heading."""
    parts = re.split(r"^## (.+)$", tour_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def module_of(path: str) -> str:
    """``tuntap/aio.py`` -> ``minivpn.tuntap.aio`` (``__init__.py``: the package)."""
    dotted = path.removesuffix(".py").replace("/", ".")
    return "minivpn." + dotted.removesuffix(".__init__")


def resolve(path: str, name: str) -> object:
    value: object = importlib.import_module(module_of(path))
    for part in name.split("."):
        value = getattr(value, part)
    return value


def test_the_stops_are_the_six_steps_in_order() -> None:
    headings = list(sections())
    numbered = [heading for heading in headings if re.match(r"\d\. ", heading)]
    assert numbered == [f"{number}. {title}" for number, title in enumerate(STOPS, start=1)]


@pytest.mark.parametrize("stop", range(1, len(STOPS) + 1))
def test_each_stop_links_file_and_function(stop: int) -> None:
    text = sections()[f"{stop}. {STOPS[stop - 1]}"]
    links = [
        (label, target)
        for label, target in _LINK.findall(text)
        if _CODE_REFERENCE.fullmatch(label) and target.startswith("../src/")
    ]
    assert len(links) >= 3, f"stop {stop} links too little code: {links}"


def references() -> list[tuple[str, str]]:
    return sorted(set(_CODE_REFERENCE.findall(tour_text())))


@pytest.mark.parametrize(("path", "name"), references(), ids=lambda value: value)
def test_every_function_and_class_named_exists(path: str, name: str) -> None:
    assert (SOURCE / path).is_file(), f"no file src/minivpn/{path}"
    value = resolve(path, name)
    assert callable(value) or isinstance(value, type), f"{path}:{name} is not code"


def test_every_file_named_exists() -> None:
    text = tour_text()
    named = set(_FILE_REFERENCE.findall(text)) | {path for path, _ in _CODE_REFERENCE.findall(text)}
    assert named
    for path in named:
        candidates = [SOURCE / path, REPO_ROOT / path]
        assert any(candidate.is_file() for candidate in candidates), f"no file {path}"


def test_every_link_points_at_a_file_that_exists_and_matches_its_label() -> None:
    for label, target in _LINK.findall(tour_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        file = (TOUR.parent / target.split("#")[0]).resolve()
        assert file.exists(), f"[{label}]({target}): no such file"
        reference = _CODE_REFERENCE.fullmatch(label) or _FILE_REFERENCE.fullmatch(label)
        if reference is not None and target.startswith("../src/minivpn/"):
            assert file == (SOURCE / reference.group(1)).resolve(), f"[{label}]({target})"


def test_the_checks_above_would_notice_a_wrong_name() -> None:
    with pytest.raises(AttributeError):
        resolve("tuntap/aio.py", "TunDevice.read_into")
    with pytest.raises(ModuleNotFoundError):
        resolve("tuntap/nothing.py", "read")
    assert _CODE_REFERENCE.findall("[`runtime/vpn.py:_Runtime.drain_tun`](x)") == [
        ("runtime/vpn.py", "_Runtime.drain_tun")
    ]


def test_the_readme_links_the_tour() -> None:
    assert "](docs/tour.md)" in (REPO_ROOT / "README.md").read_text()

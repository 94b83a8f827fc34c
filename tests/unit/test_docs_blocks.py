"""Every code block of README.md and docs/*.md is run by a test, or marked with the reason why not.

``tests/netns/test_docs_run.py`` runs the blocks; this file checks that each block is
accounted for (a new block is covered by default: without a language that runs, or a marker,
it fails here), that every ``checked by:`` names a test that exists, and that the Python
fragments that cannot run use only names that exist.  The conventions are in
:mod:`tests.helpers.docs` and docs/tour.md ("Code blocks that run").  The second half tests
the helpers themselves on made-up Markdown, so that they cannot pass by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tests.helpers.docs import (
    REPO_ROOT,
    Block,
    Command,
    all_blocks,
    iter_problems,
    missing_names,
    output_matches,
    parse_console,
    parse_markdown,
)

BLOCKS = all_blocks()


def blocks_with(predicate: object) -> list[Block]:
    return [block for block in BLOCKS if callable(predicate) and predicate(block)]


def test_the_documentation_has_blocks_of_every_kind() -> None:
    kinds = {block.info for block in BLOCKS if block.runs_here}
    assert kinds == {"sh", "console", "python"}
    assert any(block.directive("not run") for block in BLOCKS)
    assert any(block.directive("checked by") for block in BLOCKS)


def test_every_block_runs_or_says_why_not() -> None:
    assert list(iter_problems(BLOCKS)) == []


CHECKED = [block for block in BLOCKS if block.directive("checked by")]


@pytest.mark.parametrize("block", CHECKED, ids=[block.where for block in CHECKED])
def test_checked_by_names_a_test_that_exists_and_reads_the_page(block: Block) -> None:
    target = block.directive("checked by") or ""
    path, _, name = target.partition("::")
    file = REPO_ROOT / path
    assert path.startswith("tests/"), f"{block.where}: {path} is not a test file"
    assert file.is_file(), f"{block.where}: no file {path}"
    functions = {
        node.name
        for node in ast.parse(file.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    assert name in functions, f"{block.where}: {path} has no test {name}"
    # The test must read the page, or it could not notice the block changing.
    page = block.path.relative_to(REPO_ROOT)
    source = file.read_text()
    assert page.name in source, f"{block.where}: {target} does not read {page}"


FRAGMENTS = [block for block in BLOCKS if block.info == "python" and not block.runs_here]


@pytest.mark.parametrize("block", FRAGMENTS, ids=[block.where for block in FRAGMENTS])
def test_python_that_does_not_run_uses_names_that_exist(block: Block) -> None:
    assert missing_names(block.text) == [], block.where


CONSOLES = [block for block in BLOCKS if block.info == "console"]


@pytest.mark.parametrize("block", CONSOLES, ids=[block.where for block in CONSOLES])
def test_console_blocks_start_with_a_prompt(block: Block) -> None:
    assert parse_console(block.text), block.where


def test_directives_for_running_are_only_on_blocks_that_run() -> None:
    for block in BLOCKS:
        if not block.runs_here:
            assert not block.all("before"), block.where
            assert not block.all("then"), block.where


# --- the helpers themselves -----------------------------------------------------------------------


def parsed(text: str) -> list[Block]:
    return parse_markdown(Path("/made/up.md"), text)


def test_a_block_without_a_language_or_a_marker_is_a_problem() -> None:
    (block,) = parsed("text\n\n```\nminivpn tun list\n```\n")
    assert block.info == ""
    assert not block.runs_here
    assert block.problem() is not None
    assert list(iter_problems([block])) == [f"{block.where}: {block.problem()}"]


def test_an_ini_block_is_not_run_either() -> None:
    (block,) = parsed("```ini\n[Interface]\n```\n")
    assert "'ini' does not run" in (block.problem() or "")


def test_markers_apply_to_the_next_fence_only() -> None:
    blocks = parsed(
        "<!-- not run: a diagram; with a semicolon -->\n```\nA -> B\n```\n"
        "```\nunmarked\n```\n"
        "<!-- users: alice; before: minivpn tun add t0 --user alice; then: true -->\n"
        "```console\n# minivpn tun list\n```\n"
    )
    first, second, third = blocks
    assert first.directive("not run") == "a diagram; with a semicolon"
    assert first.problem() is None
    assert second.problem() is not None
    assert third.directives == (
        ("users", "alice"),
        ("before", "minivpn tun add t0 --user alice"),
        ("then", "true"),
    )
    assert third.runs_here


def test_a_reason_is_needed_and_unknown_markers_are_problems() -> None:
    empty, unknown, comment = parsed(
        "<!-- not run: -->\n```sh\ntrue\n```\n"
        "<!-- run: maybe -->\n```sh\ntrue\n```\n"
        "<!-- an ordinary comment -->\n```sh\ntrue\n```\n"
    )
    assert empty.problem() == "'not run:' needs a reason"
    assert "unknown marker 'run: maybe'" in (unknown.problem() or "")
    assert not unknown.runs_here
    assert comment.problem() is None
    assert comment.runs_here


def test_indented_fences_inside_lists() -> None:
    (block,) = parsed("1. step\n\n   ```sh\n   minivpn tun list\n   ```\n")
    assert block.info == "sh"
    assert block.text == "minivpn tun list\n"


def test_console_prompts_output_and_ctrl_c() -> None:
    commands = parse_console(
        "hostb# minivpn tunnel tun0 --listen 5000\n"
        "minivpn: listening\n"
        "alice$ minivpn tun attach t0\n"
        "attached to t0\n"
        "^C\n"
        "detached from t0\n"
        "$ minivpn demo\n"
    )
    assert commands == [
        Command("hostb", True, "minivpn tunnel tun0 --listen 5000", ("minivpn: listening",)),
        Command(
            "alice", False, "minivpn tun attach t0", ("attached to t0",), ("detached from t0",)
        ),
        Command("", False, "minivpn demo", ()),
    ]
    with pytest.raises(ValueError, match="output before the first command"):
        parse_console("no prompt\n$ true\n")


@pytest.mark.parametrize(
    ("expected", "actual", "prefix", "result"),
    [
        (["a", "b"], ["a", "b"], False, True),
        (["a", "b"], ["a", "b", "c"], False, False),
        (["a", "b"], ["a", "b", "c"], True, True),
        (["a", "b"], ["a"], True, False),
        (["a", "...", "c"], ["a", "c"], False, True),
        (["a", "...", "c"], ["a", "x", "y", "c"], False, True),
        (["a", "...", "c"], ["a", "x", "y"], False, False),
        (["time=... ms"], ["time=0.81 ms"], False, True),
        (["time=... ms"], ["time=0.81 s"], False, False),
        (["a  "], ["a"], False, True),
        (["(udp)"], ["(tcp)"], False, False),
        ([], [], False, True),
        ([], ["anything"], False, False),
    ],
)
def test_output_matching(
    expected: list[str], actual: list[str], prefix: bool, result: bool
) -> None:
    assert output_matches(expected, actual, prefix=prefix) is result


def test_missing_names_finds_what_does_not_exist() -> None:
    fragment = (
        "import trio\n"
        "from minivpn import netconf, nothing\n"
        "from minivpn.tuntap.aio import TunDevice\n"
        "async def f(tun: TunDevice) -> None:\n"
        "    await tun.wait_readable()\n"
        "    tun.read_into(buffer)\n"  # the bug docs/wireguard.md once had
        "    netconf.configure_link\n"
        "    trio.lowlevel.wait_readable\n"
        "    trio.lowlevel.wait_readablez\n"
        "async with trio.open_nursery() as nursery:\n"
        "    pass\n"
    )
    assert missing_names(fragment) == [
        "TunDevice.read_into",
        "minivpn.nothing",
        "trio.lowlevel.wait_readablez",
    ]

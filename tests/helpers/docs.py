"""The code blocks of README.md and docs/*.md: found, sorted out, and checked for what they show.

Every fenced block in those files is covered by default: ``tests/unit/test_docs_blocks.py``
sorts each one out, and ``tests/netns/test_docs_run.py`` runs the runnable ones.  A block is
one of these, decided by its info string and by the HTML comment on the line right before its
opening fence (invisible once the Markdown is rendered; docs/tour.md, "Code blocks that run",
says the same for writers):

* ``sh``: a shell session, run by ``bash -e`` as root in a fresh network namespace;
* ``console``: commands after a prompt (``# `` as root, ``$ `` as an ordinary user,
  ``NAME# `` / ``NAME$ `` on the host NAME, or as the user NAME when ``users:`` names it),
  each followed by the output it must print (``...`` stands for any text, or any lines when
  alone on its line; a line ``^C`` is Ctrl-C);
* ``python``: a program, run as root in a fresh network namespace;
* ``<!-- not run: REASON -->``: not run, for the reason given (a diagram, a byte layout, a
  second real machine, ...: all the rest of the comment); a ``python`` block is still checked
  for the names it uses;
* ``<!-- checked by: tests/PATH.py::TEST -->``: run, or compared, by that test instead.

A block without a marker and without a language that runs is an error.  The HTML comment may
hold more directives for a block that runs, separated by ``;``:

* ``before: COMMAND``: a shell command run first, as root, in the block's directory and its
  first host (it must succeed);
* ``then: COMMAND``: run after the block started (for a program that keeps running), tried
  again until it succeeds, for at most 20 seconds;
* ``users: NAME ...``: these users exist for the block (a private ``/etc/passwd``); they are
  real second users, so the block needs real root.

``python -m tests.helpers.docs config FILE ...`` writes the WireGuard configuration a block's
``before:`` asks for.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The languages a block may have and still run without a marker.
RUNNABLE = frozenset({"sh", "console", "python"})

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
_DIRECTIVE = re.compile(r"^(?P<key>[a-z ]+):\s*(?P<value>.*)$")
_DIRECTIVES = ("not run", "checked by", "before", "then", "users")
#: A console prompt: an optional host or user name, then ``#`` (root) or ``$``.
_PROMPT = re.compile(r"^(?P<who>[a-z][a-z0-9_-]*)?(?P<sign>[#$]) (?P<command>.*)$")


def documentation_files() -> list[Path]:
    """README.md and every page of docs/, in a stable order."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


@attrs.frozen
class Block:
    """One fenced code block of a Markdown file.

    Attributes:
        path: the file.
        line: the line of the opening fence (1-based).
        info: the info string's first word (the language), or "".
        text: the block's content, fences excluded, indentation of the fence removed.
        directives: the marker's directives, in order: ``(key, value)``.
        marker_error: what is wrong with the marker, if anything.
    """

    path: Path
    line: int
    info: str
    text: str
    directives: tuple[tuple[str, str], ...] = ()
    marker_error: str | None = None

    @property
    def where(self) -> str:
        """``docs/vpn.md:28``: the file, relative to the repository, and the line."""
        try:
            name = self.path.relative_to(REPO_ROOT)
        except ValueError:
            name = self.path
        return f"{name}:{self.line}"

    def directive(self, key: str) -> str | None:
        """The value of the first directive *key*, or None."""
        return next((value for name, value in self.directives if name == key), None)

    def all(self, key: str) -> list[str]:
        """The values of every directive *key*, in order."""
        return [value for name, value in self.directives if name == key]

    @property
    def runs_here(self) -> bool:
        """Whether the docs' own test runs it (runnable, and neither not run nor checked by)."""
        return (
            self.info in RUNNABLE
            and self.marker_error is None
            and self.directive("not run") is None
            and self.directive("checked by") is None
        )

    def problem(self) -> str | None:
        """Why this block is not properly accounted for, or None if it is."""
        if self.marker_error is not None:
            return self.marker_error
        reason = self.directive("not run")
        if reason is not None and not reason.strip():
            return "'not run:' needs a reason"
        if reason is None and self.directive("checked by") is None and self.info not in RUNNABLE:
            language = f"'{self.info}'" if self.info else "no language"
            return (
                f"a block with {language} does not run: give it sh, console or python, or mark "
                "it <!-- not run: REASON --> (or <!-- checked by: tests/...::TEST -->)"
            )
        return None


def parse_markdown(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced code block of *path* (or of *text*, said to come from *path*)."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        start, indent, fence = index, len(match["indent"]), match["fence"]
        info = match["info"].strip().split(" ")[0]
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        index += 1  # the closing fence
        directives, error = _marker(lines[start - 1] if start > 0 else "")
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                info=info,
                text="\n".join(body) + "\n",
                directives=directives,
                marker_error=error,
            )
        )
    return blocks


def _marker(line: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The directives of an HTML comment line, and an error if it holds an unknown one."""
    match = _MARKER.match(line)
    if match is None:
        return (), None
    if match["body"].startswith("not run:"):  # the reason is all the rest, semicolons too
        return (("not run", match["body"][len("not run:") :].strip()),), None
    directives = []
    for part in match["body"].split(";"):
        found = _DIRECTIVE.match(part.strip())
        if found is None or found["key"] not in _DIRECTIVES:
            if not directives and found is None:
                return (), None  # an ordinary comment, not a marker
            known = ", ".join(f"'{key}:'" for key in _DIRECTIVES)
            return (), f"unknown marker {part.strip()!r}: use {known}"
        directives.append((found["key"], found["value"].strip()))
    return tuple(directives), None


def all_blocks() -> list[Block]:
    """Every block of every documentation file."""
    return [block for path in documentation_files() for block in parse_markdown(path)]


# --- console blocks -------------------------------------------------------------------------------


@attrs.frozen
class Command:
    """One command of a console block and the output shown after it.

    Attributes:
        who: the host or user before the prompt ("" for the one host).
        root: ``#`` (root) rather than ``$`` (an ordinary user).
        command: the command line, as a shell reads it.
        output: the lines shown before Ctrl-C (all of them without one).
        after_interrupt: the lines shown after ``^C``, or None when there is no ``^C``.
    """

    who: str
    root: bool
    command: str
    output: tuple[str, ...]
    after_interrupt: tuple[str, ...] | None = None


def parse_console(text: str) -> list[Command]:
    """The commands of a console block, each with the output lines that follow it.

    Raises:
        ValueError: output before the first prompt, or a line ``^C`` twice for one command.
    """
    commands: list[Command] = []
    for line in text.splitlines():
        prompt = _PROMPT.match(line)
        if prompt is not None:
            commands.append(
                Command(prompt["who"] or "", prompt["sign"] == "#", prompt["command"], ())
            )
            continue
        if not commands:
            raise ValueError(f"output before the first command: {line!r}")
        last = commands[-1]
        if line.strip() == "^C":
            if last.after_interrupt is not None:
                raise ValueError(f"two ^C for one command: {last.command!r}")
            commands[-1] = attrs.evolve(last, after_interrupt=())
        elif last.after_interrupt is not None:
            commands[-1] = attrs.evolve(last, after_interrupt=(*last.after_interrupt, line))
        else:
            commands[-1] = attrs.evolve(last, output=(*last.output, line))
    return commands


def _line_pattern(expected: str) -> re.Pattern[str]:
    """An expected output line as a regular expression: ``...`` is any text."""
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")), re.DOTALL)


def output_matches(expected: Sequence[str], actual: Sequence[str], *, prefix: bool = False) -> bool:
    """Whether *actual* lines are what *expected* shows.

    A line ``...`` alone stands for any number of lines (none included); ``...`` within a line
    for any text.  Trailing spaces do not count.  With *prefix*, *actual* may go on after what
    *expected* shows (the program is still running).
    """
    want = [line.rstrip() for line in expected]
    have = [line.rstrip() for line in actual]

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return prefix or j == len(have)
        if want[i] == "...":
            return any(match(i + 1, k) for k in range(j, len(have) + 1))
        if j == len(have) or _line_pattern(want[i]).fullmatch(have[j]) is None:
            return False
        return match(i + 1, j + 1)

    return match(0, 0)


# --- Python blocks that do not run: the names they use must exist ---------------------------------


def missing_names(source: str) -> list[str]:
    """The names a Python fragment uses that do not exist: what it imports, and the
    attributes it reads from imported modules and from parameters annotated with an imported
    class (``def f(tun: TunDevice): tun.read_into`` names ``TunDevice.read_into``).

    The fragment may use ``await``, ``async for`` and ``async with`` at the top level.
    """
    tree = ast.parse(source)
    namespace: dict[str, object] = {}
    missing: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    module = importlib.import_module(alias.name)
                except ImportError:
                    missing.append(alias.name)
                    continue
                if alias.asname:
                    namespace[alias.asname] = module
                else:
                    namespace[alias.name.split(".")[0]] = importlib.import_module(
                        alias.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(node.module)
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:  # a submodule: ``from minivpn import netconf``
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{node.module}.{alias.name}")
                        continue
                namespace[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None and dotted[0] in namespace:
                missing += _resolve(namespace[dotted[0]], dotted)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            missing += _annotated_uses(node, namespace)
    return sorted(set(missing))


def _dotted(node: ast.Attribute) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None if it does not start with a plain name."""
    parts = [node.attr]
    value = node.value
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    if not isinstance(value, ast.Name):
        return None
    return [value.id, *reversed(parts)]


def _resolve(root: object, dotted: list[str]) -> list[str]:
    """[] if every attribute along *dotted* exists from *root*; else the first missing one."""
    current = root
    for depth, name in enumerate(dotted[1:], start=1):
        if not hasattr(current, name):
            # A submodule that nothing imported yet is still there.
            module = getattr(current, "__name__", None)
            if isinstance(current, type(builtins)) and module is not None:
                try:
                    current = importlib.import_module(f"{module}.{name}")
                    continue
                except ImportError:
                    pass
            return [".".join(dotted[: depth + 1])]
        current = getattr(current, name)
    return []


def _annotated_uses(
    function: ast.FunctionDef | ast.AsyncFunctionDef, namespace: dict[str, object]
) -> list[str]:
    """Attributes read from the parameters of *function* that are annotated with a class."""
    classes: dict[str, type] = {}
    for argument in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs):
        annotation = argument.annotation
        if isinstance(annotation, ast.Name) and isinstance(namespace.get(annotation.id), type):
            classes[argument.arg] = namespace[annotation.id]  # type: ignore[assignment]
        elif isinstance(annotation, ast.Attribute):
            dotted = _dotted(annotation)
            if (
                dotted is not None
                and dotted[0] in namespace
                and not _resolve(namespace[dotted[0]], dotted)
            ):
                value: object = namespace[dotted[0]]
                for name in dotted[1:]:
                    value = getattr(value, name)
                if isinstance(value, type):
                    classes[argument.arg] = value
    missing = []
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in classes
            and not hasattr(classes[node.value.id], node.attr)
        ):
            missing.append(f"{classes[node.value.id].__qualname__}.{node.attr}")
    return missing


# --- what a block's "before:" may ask for ---------------------------------------------------------


def write_config(path: Path, *, wg_quick: bool = True) -> None:
    """A WireGuard configuration for interface ``path.stem``, with one peer, mode 0600.

    With *wg_quick*, it has wg-quick's ``Address`` too (``minivpn up``, ``wg-quick up``; ``wg
    setconf`` takes it through ``wg-quick strip``).  The peer's endpoint, 192.0.2.7, is a
    documentation address: nothing routes to it, so nothing is ever sent there.
    """
    from minivpn.wireguard.keys import PrivateKey

    own, peer = PrivateKey.generate(), PrivateKey.generate()
    number = int(re.sub(r"\D", "", path.stem) or 0) % 256  # wg1.conf: 10.99.1.1, peer .2
    lines = ["[Interface]", f"PrivateKey = {own.to_base64()}", "ListenPort = 51820"]
    if wg_quick:
        lines.append(f"Address = 10.99.{number}.1/24")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {peer.public_key().to_base64()}",
        f"AllowedIPs = 10.99.{number}.2/32",
        "Endpoint = 192.0.2.7:51820",
    ]
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.helpers.docs config FILE...``: write configurations for a block."""
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.docs")
    commands = parser.add_subparsers(dest="what", required=True)
    config = commands.add_parser("config", help="write WireGuard configuration files")
    config.add_argument("files", nargs="+", type=Path)
    options = parser.parse_args(argv)
    for path in options.files:
        write_config(path)
    return 0


def iter_problems(blocks: Sequence[Block]) -> Iterator[str]:
    """One line per block that is not accounted for."""
    for block in blocks:
        problem = block.problem()
        if problem is not None:
            yield f"{block.where}: {problem}"


if __name__ == "__main__":
    sys.exit(main())

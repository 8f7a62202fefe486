# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The whole ``snpguard`` argparse tree documents itself.

Every action (option, positional, subcommand choice) has a help text, every parser shows
at least one example command line for itself in its description or epilog, and every
example parses with the real parser, so examples cannot rot when options change.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator

import pytest

from ansible_collections.snpguard.cvm.cli import main as cli_main
from ansible_collections.snpguard.cvm.cli.common import ParseError

EXAMPLE = re.compile(r"^\s*\$ (?:[A-Z_]+=\S*\s+)*(snpguard\b.*)$")
SHELL_STOP = {">", ">>", "|", "&&", ";", "2>&1", "<"}


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from walk(sub)


def example_lines(parser: argparse.ArgumentParser) -> list[str]:
    """Example command lines (``$ snpguard ...``, backslash continuations joined)."""
    text = "\n".join(part for part in (parser.description, parser.epilog) if part)
    lines, current = [], None
    for raw in text.splitlines():
        if current is not None:
            current += " " + raw.strip()
        else:
            match = EXAMPLE.match(raw)
            if not match:
                continue
            current = match.group(1)
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        lines.append(current)
        current = None
    return lines


PARSERS = {p.prog: p for p in walk(cli_main.build_parser())}


def test_the_tree_is_complete() -> None:
    """The walk sees every command family and some of the deepest parsers (the test is not vacuous)."""
    for prog in ("snpguard", "snpguard measure diff", "snpguard id-block verify", "snpguard report verify",
                 "snpguard certs fetch", "snpguard server rotate-kek", "snpguard config login",
                 "snpguard image register", "snpguard token revoke", "snpguard sim init", "snpguard sim show"):
        assert prog in PARSERS
    assert len(PARSERS) > 35


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_action_has_help(prog: str) -> None:
    parser = PARSERS[prog]
    missing = []
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
            missing.append("/".join(action.option_strings) or action.metavar or action.dest)
        if isinstance(action, argparse._SubParsersAction):
            missing.extend(f"subcommand {choice.dest}" for choice in action._choices_actions if not choice.help)
    assert missing == [], f"{prog}: no help for {missing}"


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_parser_shows_an_example_that_parses(prog: str) -> None:
    parser = PARSERS[prog]
    mine = [line for line in example_lines(parser) if line == prog or line.startswith(prog + " ")]
    assert mine, f"{prog}: no example command line starting with '{prog}' in its description or epilog"
    for line in example_lines(parser):
        words = shlex.split(line)
        for index, word in enumerate(words):
            if word in SHELL_STOP:
                words = words[:index]
                break
        try:
            cli_main.build_parser().parse_args(words[1:])
        except ParseError as exc:
            pytest.fail(f"{prog}: example {line!r} does not parse: {exc.message}")
        except SystemExit as exc:  # --help/--version examples
            assert exc.code == 0


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_help_renders(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    PARSERS[prog].print_help()
    out = capsys.readouterr().out
    assert out.startswith("usage: " + prog) and "example" in out


def test_top_level_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main.build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for line in ("0  done", "1  refused or different", "2  usage", "3  runtime"):
        assert line in out

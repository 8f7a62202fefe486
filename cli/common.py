# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What every ``snpguard`` subcommand shares: exit codes, error classes and output, the parser class.

Exit codes (``snpguard --help`` and the CLI guide list them):

* 0 — done; the report is valid, the launches are the same.
* 1 — refused or different: a verification refused, ``measure diff`` found differences,
  a check failed, the key-release server refused the request (HTTP 4xx other than 408 and 429),
  a question was answered no.
* 2 — usage: bad arguments (argparse), a value or an input file that is not what it must
  be, something missing that only the caller can give (``--yes``, a token, ``--force``).
* 3 — runtime: a file that cannot be read or written, a server, KDS or guest device that
  cannot be reached, fails (HTTP 5xx) or is busy (408, 429), any unexpected error.
* 130 — interrupted (Ctrl-C).

With ``--json``, stdout carries exactly one JSON document even on errors:
``{"error": {"message", "code", "field"?, "path"?, ...}, "exit_code": N}``; human mode
prints one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from ..plugins.module_utils.snp.errors import SnpError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3

EXIT_CODES_HELP = """\
exit status:
  0  done (valid, identical, written)
  1  refused or different: a verification refused, 'measure diff' found
     differences, a check failed, the server refused (HTTP 4xx), a question
     was answered no
  2  usage: bad arguments or option values, an input that is not what it
     must be, something only the caller can give (--yes, a token, --force)
  3  runtime: a file cannot be read or written; a server, KDS or the guest
     device cannot be reached or fails; an unexpected error

With --json, errors are JSON on stdout too: {"error": {"message": ..., "code":
..., "field": ...}, "exit_code": N}."""

#: ``SnpError.field`` values that name the machine, not the caller's input.
RUNTIME_FIELDS = frozenset({"kds", "report_source", "configfs", "sev_guest", "server", "database", "kek"})

_CODES = {EXIT_REFUSED: "refused", EXIT_USAGE: "usage_error", EXIT_RUNTIME: "runtime_error"}


class CliError(SnpError):
    """An error that knows its exit code; ``code`` is a short machine-readable name."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, field=field, path=path)
        self.code = code


class Refused(CliError):
    """A check said no (exit 1)."""

    exit_code = EXIT_REFUSED


class UsageError(CliError):
    """The caller must change the command line (exit 2)."""

    exit_code = EXIT_USAGE


class RuntimeFailure(CliError):
    """The machine, a file or a server failed (exit 3)."""

    exit_code = EXIT_RUNTIME


class ParseError(Exception):
    """argparse's complaint, raised instead of exiting so that ``--json`` can shape it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


def _caused_by_os_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc.__cause__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__
    return False


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception that reached the top (see the module docstring)."""
    explicit = getattr(exc, "exit_code", None)
    if isinstance(explicit, int):
        return explicit
    if isinstance(exc, SnpError):
        status = getattr(exc, "status", "absent")  # ApiError: None when the server was unreachable
        if status != "absent":
            refused = isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)  # not "busy"
            return EXIT_REFUSED if refused else EXIT_RUNTIME
        if exc.field in RUNTIME_FIELDS or _caused_by_os_error(exc):
            return EXIT_RUNTIME
        return EXIT_USAGE
    return EXIT_RUNTIME


def error_document(exc: BaseException, exit_code: int) -> dict[str, Any]:
    """``{"error": {...}, "exit_code": N}`` for ``--json`` mode."""
    if isinstance(exc, SnpError):
        error: dict[str, Any] = {"message": exc.message}
        for key in ("field", "path", "status", "check"):
            value = getattr(exc, key, None)
            if value is not None:
                error[key] = value
        error["code"] = getattr(exc, "code", None) or _CODES.get(exit_code, "error")
    elif isinstance(exc, ParseError):
        error = {"message": exc.message, "code": "usage_error", "command": exc.parser.prog}
    else:
        error = {"message": f"{type(exc).__name__}: {exc}", "code": "unexpected_error"}
    return {"error": error, "exit_code": exit_code}


def readable(value: Any) -> str:
    """A value for people: hex and numbers as they are, lists comma-separated, mappings as k=v; never a repr."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, str):
        return json.dumps(value) if not value or any(c.isspace() for c in value) or '"' in value else value
    if isinstance(value, dict):
        return " ".join(f"{k}={readable(v)}" for k, v in value.items()) if value else "none"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(readable(v) for v in value) if value else "none"
    return str(value)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def report_error(exc: BaseException, *, command: str | None, json_mode: bool) -> int:
    """Print ``exc`` the way the mode wants and return its exit code."""
    if isinstance(exc, ParseError):
        code = EXIT_USAGE
        if json_mode:
            print_json(error_document(exc, code))
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        return code
    code = exit_code_for(exc)
    if json_mode:
        print_json(error_document(exc, code))
    elif isinstance(exc, SnpError):
        print(f"snpguard {command}: error: {exc}", file=sys.stderr)
    else:
        print(f"snpguard {command}: unexpected error: {type(exc).__name__}: {exc}"
              " (SNPGUARD_DEBUG=1 shows the traceback)", file=sys.stderr)
    if not isinstance(exc, SnpError) and os.environ.get("SNPGUARD_DEBUG"):
        traceback.print_exception(exc, file=sys.stderr)
    return code


def wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the options (before a ``--``), for errors found before parsing ends."""
    options = list(argv)
    if "--" in options:
        options = options[:options.index("--")]
    return "--json" in options


class HelpFormatter(argparse.HelpFormatter):
    """Fills prose paragraphs but keeps indented ones (examples) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.split("\n")
            if any(line.startswith(" ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (``ParseError``) for ``main`` to print."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ParseError(self, message)


_COMMAND_START = re.compile(r"^(?:[A-Z_]+=\S*\s+)*snpguard\b")


def examples(*lines: str) -> str:
    """An epilog of example command lines, one per argument (``\\`` continuations allowed).

    A line that starts with ``snpguard`` (perhaps after ``VAR=value`` settings) starts a
    command; any other line continues the one before.
    """
    starts = [bool(_COMMAND_START.match(line)) for line in lines]
    body = "\n".join(f"  $ {line}" if start else f"    {line}" for line, start in zip(lines, starts, strict=True))
    return f"example{'s' if sum(starts) > 1 else ''}:\n{body}"


def add_json(parser: argparse.ArgumentParser, what: str = "print JSON (errors too, on stdout)", **kwargs: Any) -> None:
    parser.add_argument("--json", action="store_true", help=what, **kwargs)

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Entry point of the ``snpguard`` console script: builds the parser, maps errors to exit codes.

Subcommands live in sibling modules that each expose ``register(subparsers)``. An error
anywhere becomes one line on stderr (or, with ``--json``, one JSON document on stdout)
and the exit code of ``common.exit_code_for``: 1 refused, 2 usage, 3 runtime.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import id_block, keyrelease, measure, report, server, sim, vm
from .common import EXIT_CODES_HELP, EXIT_OK, ParseError, Parser, examples, report_error, wants_json
from .version import VersionAction

SUBCOMMANDS = (measure, id_block, report, server, keyrelease, sim, vm)


def build_parser() -> Parser:
    parser = Parser(
        prog="snpguard",
        description="AMD SEV-SNP confidential VMs: measure launches, sign ID blocks, verify attestation reports, "
        "run and use the key-release server. 'snpguard COMMAND --help' describes each command.",
        epilog=examples(
            "snpguard measure --ovmf OVMF.amdsev.fd --kernel vmlinuz --initrd initrd.img \\",
            "--append console=ttyS0 --vcpus 2 --vcpu-type EPYC-v4",
            "snpguard report verify --report report.bin --certs-dir certs/ --measurement HEX",
            "snpguard sim init ./simulated-amdsp",
        ) + "\n\n" + EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action=VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       help="what to do (each has its own --help)")
    for command in SUBCOMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # argparse would blame the top-level parser; name the subcommand's usage instead
            raise ParseError(_deepest(parser, args), f"unrecognized arguments: {' '.join(extras)}")
    except ParseError as exc:
        return report_error(exc, command=None, json_mode=wants_json(argv))
    json_mode = bool(getattr(args, "json", False) or getattr(args, "diff_json", False))
    command = " ".join(part for part in (args.command, *_actions(args)) if part)
    try:
        return int(args.handler(args) or EXIT_OK)
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"snpguard {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return report_error(exc, command=args.command, json_mode=json_mode)


def _deepest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand parser that ``args`` went through last."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _deepest(chosen, args)
    return parser


def _actions(args: object) -> list[str]:
    """The second word of the command (``report verify``), for messages."""
    return [value for key, value in vars(args).items() if key.endswith("_action") and isinstance(value, str)]


if __name__ == "__main__":
    sys.exit(main())

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Entry point of the ``snpguard`` console script: builds the parser, maps errors.

Subcommands live in sibling modules that each expose ``register(subparsers)``;
an ``SnpError`` anywhere becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..plugins.module_utils.snp.errors import SnpError
from . import id_block, keyrelease, measure, report, server

SUBCOMMANDS = (measure, id_block, report, server, keyrelease)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snpguard",
        description="AMD SEV-SNP confidential VMs: measure, sign, attest, release keys, boot.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SnpError as exc:
        print(f"snpguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

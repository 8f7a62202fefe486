# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard image embed``: image surgery verbs of the ``image`` command (the parser lives in keyrelease.py).

``add_actions(actions)`` adds them to the ``image`` subparsers: ``embed`` writes a launch
bundle into the image's LAUNCH_ARTIFACTS partition (``cvm_embed``'s backend,
plugins/module_utils/image/embed.py).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..plugins.module_utils.image.embed import embed
from .common import add_json, examples, print_json
from .process import run


def add_actions(actions: Any) -> None:
    parser = actions.add_parser(
        "embed", help="write a launch bundle into the image's LAUNCH_ARTIFACTS partition (A/B, atomic switch)",
        description="Write a launch bundle (tar.gz, as 'snpguard image bundle' downloads it) into the "
                    "LAUNCH_ARTIFACTS partition of a qcow2 or raw image: the partition (GPT name and ext4 label "
                    "LAUNCH_ARTIFACTS) is added when missing, growing the image by --size; the bundle is unpacked "
                    "into the inactive one of a/ and b/ and the 'artifacts' symlink is switched to it atomically. "
                    "The same bundle already active changes nothing. Uses libguestfs (python3-guestfs); without KVM "
                    "set LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg.",
        epilog=examples("snpguard image embed web-1.qcow2 --bundle debian13-web.bundle.tar.gz",
                        "snpguard image embed web-1.raw --bundle web.bundle.tar.gz --size 256M --format raw --check"))
    parser.add_argument("image", metavar="IMAGE", help="the qcow2 or raw image (not in use by a running VM)")
    parser.add_argument("--bundle", required=True, metavar="FILE", help="the launch bundle (tar.gz)")
    parser.add_argument("--size", default="512M", metavar="SIZE",
                        help="size of a new LAUNCH_ARTIFACTS partition, e.g. 512M (default) or 1G")
    parser.add_argument("--format", dest="image_format", choices=["qcow2", "raw"],
                        help="the image's format (default: what qemu-img detects)")
    parser.add_argument("--check", action="store_true", help="only say what would be done")
    add_json(parser)
    parser.set_defaults(handler=_embed)


def _embed(args: argparse.Namespace) -> int:
    result = embed(args.image, args.bundle, runner=run, size=args.size, image_format=args.image_format,
                   check_mode=args.check)
    if args.json:
        print_json(result)
        return 0
    print(f"{args.image}: {result['msg']}" + ("" if result["changed"] else " (unchanged)"))
    before, after = result["diff"]["before"], result["diff"]["after"]
    if before != after:
        print(f"  active bundle: {json.dumps(before)} -> {json.dumps(after)}")
    return 0

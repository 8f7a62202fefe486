# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard image convert``: a stock cloud image in, a confidential image and its staging dir out.

The ``cvm_image`` module's backend (plugins/module_utils/image/cvm_image.py) with the same
option names; progress goes to stderr, one line per step (and per copied directory).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..plugins.module_utils.image.cvm_image import DEFAULT_FIRMWARE, apply, stamped
from .common import add_json, examples, print_json
from .process import run

EXAMPLE = ("snpguard image convert debian-13-genericcloud-amd64.qcow2 debian-13-cvm.qcow2 --staging-dir "
           "debian-13-cvm.staging --name debian-13-cvm --server-url https://keys.example:8443 --server-ca ca.pem "
           "--ingestion-key B64")


def add_convert(actions: Any) -> None:
    parser = actions.add_parser(
        "convert", help="convert a stock cloud image into a confidential one (LUKS2 root, agent in the initrd)",
        description="Copy a stock qcow2 into a new image whose root is LUKS2, unlocked at boot by the key-release "
                    "agent after attestation; write the staging dir that 'image register --staging-dir' takes. The "
                    "stock image is never modified; nothing is written unless everything succeeds; a rerun with the "
                    "same image and options changes nothing.",
        epilog=examples(EXAMPLE, EXAMPLE + " --check"))
    parser.add_argument("source", metavar="SOURCE", help="the stock qcow2 image")
    parser.add_argument("output", metavar="OUTPUT", help="the confidential qcow2 image to write")
    parser.add_argument("--staging-dir", required=True, metavar="DIR", help="the staging dir to write")
    parser.add_argument("--name", required=True, help="the image's name on the key-release server")
    parser.add_argument("--mode", choices=["luks", "verity"], default="luks",
                        help="luks (default): an encrypted root the agent unlocks after attestation; verity: a "
                             "read-only root checked by dm-verity, its root hash on the measured cmdline")
    parser.add_argument("--server-url", metavar="URL", help="luks: the server the agent asks (https://)")
    parser.add_argument("--server-ca", dest="server_ca_file", metavar="FILE",
                        help="luks: the server's CA (PEM), pinned by the agent")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--ingestion-key", dest="ingestion_public_key", metavar="B64",
                     help="the server's ingestion public key (its /v1/info): the volume key leaves only sealed")
    key.add_argument("--volume-key-file", metavar="FILE", help="write the plaintext volume key here (0600) instead")
    parser.add_argument("--firmware", default=DEFAULT_FIRMWARE, metavar="FILE",
                        help=f"the SNP firmware the image launches with (default {DEFAULT_FIRMWARE})")
    parser.add_argument("--kernel", metavar="VERSION", help="the kernel to boot (default the newest in /boot)")
    parser.add_argument("--vcpus", metavar="N[,N...]", help="vCPU counts to measure for (default 1)")
    parser.add_argument("--vcpu-type", default="EPYC-v4", metavar="MODEL", help="QEMU CPU model (default EPYC-v4)")
    parser.add_argument("--policy", default="0x30000", help="guest policy (default 0x30000)")
    parser.add_argument("--guest-features", default="0x1", metavar="HEX", help="SEV_FEATURES (default 0x1)")
    parser.add_argument("--extra-cmdline", metavar="TEXT", help="arguments appended to the measured command line")
    parser.add_argument("--report-source", choices=["auto", "configfs", "sev-guest", "channel"], default="auto",
                        help="where the agent asks for reports (channel: a simulated launch, labs only)")
    parser.add_argument("--crypto-source", metavar="PATH",
                        help="cryptography for the agent: site-packages dir or abi3 wheel (default this Python's)")
    parser.add_argument("--pbkdf-memory-kib", type=int, default=65536, metavar="KIB",
                        help="argon2id memory of the keyslot (default 65536)")
    parser.add_argument("--pbkdf-iterations", type=int, default=4, metavar="N",
                        help="argon2id iterations (default 4)")
    parser.add_argument("--integrity", action="store_true", help="dm-integrity under the encryption")
    parser.add_argument("--package-mirror", metavar="URL", help="Debian archive for missing packages")
    parser.add_argument("--package-cache", metavar="DIR", help="where fetched packages are kept")
    parser.add_argument("--force-tcg", action="store_true", help="libguestfs' appliance without KVM")
    parser.add_argument("--check", action="store_true", help="inspect and plan only")
    add_json(parser)
    parser.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    params = {key: value for key, value in vars(args).items() if key not in ("handler", "json", "check")}
    started = time.monotonic()
    result = apply(params, run, check_mode=args.check,
                   progress=lambda line: print(f"convert: {stamped(started, line)}", file=sys.stderr, flush=True))
    if args.json:
        print_json(result)
        return 0
    if not result["changed"]:
        print(f"{result['output']}: up to date ({result['staging_dir']})")
        return 0
    print(("would convert" if args.check else "converted") + f" {args.source} -> {result['output']}")
    for line in result["plan"]:
        print(f"  {line}")
    return 0

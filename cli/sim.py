# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard sim init|show``: the SIMULATED AMD-SP directory of test labs without SEV-SNP hardware.

``init`` makes a new simulated chain (ARK and ASK RSA-4096, VCEK P-384, AMD's names with a
SIMULATED organisation) and writes it with ``save_simulated_amdsp``: private keys 0600,
directory 0700.  That directory is what ``simulated_amdsp`` (``snp_guest_report``),
``guest_simulated_amdsp`` (``attest``) and ``report fetch --simulated-amdsp`` sign with;
its ``ark.pem`` is what ``simulated_root`` / ``--simulated-root`` must name before any
verifier accepts such a report.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import textwrap
from typing import Any

from ..plugins.module_utils.attestation.simulator_store import load_simulated_amdsp, save_simulated_amdsp
from ..plugins.module_utils.snp.amd_certs import fingerprint
from ..plugins.module_utils.snp.simulated_amdsp import SIMULATED_ORG, SimulatedAmdSp
from ..plugins.module_utils.snp.tcb import Product
from .common import UsageError, add_json, examples, print_json

PRODUCTS = tuple(p.value.lower() for p in Product)
LAUNCH_FILE = "launch.json"

NOTE = ("NOTE: this is a SIMULATED AMD-SP chain, not AMD's. No verifier trusts it unless it is configured "
        "explicitly (--simulated-root / simulated_root naming its ark.pem). Use it in test labs only; never "
        "configure it in production.")


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser(
        "sim", help="a SIMULATED AMD-SP directory for test labs without SEV-SNP hardware",
        description="Create or inspect the directory of a simulated AMD-SP: a test certificate chain with AMD's "
                    "names and extensions (organisation '" + SIMULATED_ORG + "') and the keys that sign "
                    "reports. Verifiers trust it only when told to explicitly.",
        epilog=examples("snpguard sim init ./lab/simulated-amdsp --product genoa",
                        "snpguard sim show ./lab/simulated-amdsp"))
    actions = sim.add_subparsers(dest="sim_action", metavar="ACTION", required=True,
                                 help="init: create a simulator; show: describe one")

    init = actions.add_parser(
        "init", help="create a simulated AMD-SP (chain and signing keys) in a directory",
        description="Create DIR (0700) with a new simulated chain: ark.pem, ask.pem, vcek.pem, their private keys "
                    "(0600) and simulated-amdsp.txt (product, chip id, TCB). Pass DIR as simulated_amdsp "
                    "(snp_guest_report), guest_simulated_amdsp (attest) or 'report fetch --simulated-amdsp', and "
                    "DIR/ark.pem as simulated_root, 'report verify --simulated-root' or 'server run "
                    "--simulated-root'. An existing simulator is never replaced without --force; a launch.json in "
                    "DIR is kept.",
        epilog=examples("snpguard sim init ./lab/simulated-amdsp",
                        "snpguard sim init ./lab/genoa --product genoa --force"))
    init.add_argument("directory", metavar="DIR",
                      help="directory to create; it may exist if empty, or hold a simulator to replace (--force)")
    init.add_argument("--product", type=str.lower, choices=PRODUCTS, default="milan",
                      help="processor line the chain and reports claim (default milan)")
    init.add_argument("--force", action="store_true",
                      help="replace the simulator in DIR by a new one (reports it signed no longer verify "
                           "against the new ark.pem)")
    add_json(init)
    init.set_defaults(handler=_init)

    show = actions.add_parser(
        "show", help="describe a simulated AMD-SP directory",
        description="Print the product, chip id, TCB, the root's SHA-256 and the files (with their modes) of a "
                    "simulated AMD-SP directory, and the launch.json it signs with, if any.",
        epilog=examples("snpguard sim show ./lab/simulated-amdsp", "snpguard sim show ./lab/simulated-amdsp --json"))
    show.add_argument("directory", metavar="DIR", help="a directory made by 'snpguard sim init'")
    add_json(show)
    show.set_defaults(handler=_show)


def _prepare(directory: str, force: bool) -> bool:
    """Check that ``directory`` may receive a new simulator; True when one is replaced."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise UsageError("exists and is not a directory", field="DIR", path=directory, code="not_a_directory")
    if not os.path.isdir(directory):
        return False
    entries = set(os.listdir(directory))
    held = entries & set(SimulatedAmdSp.FILES)
    if not held:
        if entries - {LAUNCH_FILE}:
            raise UsageError("is not empty and holds no simulated AMD-SP; give a new or empty directory",
                             field="DIR", path=directory, code="not_empty")
        return False
    if not force:
        raise UsageError(f"already holds a simulated AMD-SP ({', '.join(sorted(held))}); add --force to replace it "
                         "by a new one", field="DIR", path=directory, code="exists")
    return True


def describe(directory: str) -> dict[str, Any]:
    """What ``show`` prints (and ``init`` after writing)."""
    sim = load_simulated_amdsp(directory)
    files = {}
    for name in (*SimulatedAmdSp.FILES, LAUNCH_FILE):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            files[name] = f"{stat.S_IMODE(os.stat(path).st_mode):04o}"
    ark_path = os.path.join(directory, "ark.pem")
    return {
        "directory": os.path.abspath(directory),
        "directory_mode": f"{stat.S_IMODE(os.stat(directory).st_mode):04o}",
        "simulated": True,
        "product": sim.product.value,
        "chip_id": sim.chip_id.hex(),
        "tcb": sim.tcb.as_dict(),
        "root": os.path.abspath(ark_path),
        "root_sha256": fingerprint(sim.ark),
        "root_subject": sim.ark.subject.rfc4514_string(),
        "not_after": sim.ark.not_valid_after_utc.isoformat(),
        "files": files,
        "launch": LAUNCH_FILE in files,
        "note": NOTE,
    }


def _print(doc: dict[str, Any], heading: str) -> None:
    directory, root = doc["directory"], doc["root"]
    tcb = " ".join(f"{k}={v}" for k, v in doc["tcb"].items() if k != "raw")
    print(heading)
    print(f"  root (ARK):   {root}")
    print(f"  root sha256:  {doc['root_sha256']}")
    print(f"  subject:      {doc['root_subject']}")
    print(f"  chip id:      {doc['chip_id']}")
    print(f"  TCB:          {tcb} ({doc['tcb']['raw']})")
    print(f"  files:        {', '.join(f'{name} {mode}' for name, mode in doc['files'].items())}")
    print(f"  launch.json:  {'present (its fields go into every report)' if doc['launch'] else 'none'}")
    print()
    print(textwrap.fill(NOTE, 79))
    print()
    print("Sign reports with it (guest side, test labs):")
    print(f"  snpguard report fetch --simulated-amdsp {directory} --out report.bin --certs-out certs.bin")
    print(f"  Ansible: simulated_amdsp: {directory} (snp_guest_report), guest_simulated_amdsp (attest)")
    print("Trust it explicitly where reports are verified:")
    print(f"  snpguard report verify --simulated-root {root} --report report.bin --certs-table certs.bin ...")
    print(f"  snpguard server run --simulated-root {root} ...")
    print(f"  Ansible: simulated_root: {root}")


def _init(args: argparse.Namespace) -> int:
    directory = args.directory
    replaced = _prepare(directory, args.force)
    sim = SimulatedAmdSp.create(Product.parse(args.product))
    save_simulated_amdsp(sim, directory)
    os.chmod(directory, 0o700)  # also when DIR existed (empty, or an older simulator)
    doc = describe(directory)
    doc["replaced"] = replaced
    if args.json:
        print_json(doc)
        print(NOTE, file=sys.stderr)
    else:
        verb = "replaced by a new one" if replaced else "created"
        _print(doc, f"simulated AMD-SP ({doc['product']}) {verb} in {doc['directory']} (0700, private keys 0600)")
    return 0


def _show(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.directory):
        raise UsageError("is not a directory (create one with 'snpguard sim init DIR')", field="DIR",
                         path=args.directory, code="not_found")
    doc = describe(args.directory)
    if args.json:
        print_json(doc)
    else:
        _print(doc, f"simulated AMD-SP ({doc['product']}) in {doc['directory']} ({doc['directory_mode']})")
    return 0

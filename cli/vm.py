# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard vm start|stop|status|argv|libvirt``: launch SEV-SNP guests with QEMU (the ``snp_vm`` module's backend).

The same options as the module: a bundle (or kernel/initrd/cmdline), the firmware, vCPUs,
memory, disks, network; ``--simulate`` with ``--simulated-amdsp DIR`` on hosts without
SEV-SNP.  ``start`` does nothing when the same configuration already runs and says so
when another one runs (``--restart`` relaunches).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..plugins.module_utils.qemu.snp_vm import DEFAULT_FIRMWARE, DEFAULT_STATE_ROOT, apply
from ..plugins.module_utils.qemu.vm import Vm
from .common import add_json, examples, print_json
from .process import run

EXAMPLE_BUNDLE = "snpguard vm start web-1 --bundle debian-13.bundle.tar.gz --disk web-1.qcow2 --network user"
EXAMPLE_SIM = ("snpguard vm start probe --kernel vmlinuz --initrd initrd.img --cmdline console=ttyS0 "
               "--firmware OVMF.amdsev.fd --simulate --simulated-amdsp ./lab/simulated-amdsp")


def _launch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="FILE",
                        help="a launch-artifacts bundle (tar.gz) from the key-release server")
    parser.add_argument("--firmware", metavar="FILE", default=DEFAULT_FIRMWARE,
                        help=f"the SNP firmware (default {DEFAULT_FIRMWARE}); with --bundle it must be the bundle's")
    parser.add_argument("--kernel", metavar="FILE", help="the kernel (without --bundle)")
    parser.add_argument("--initrd", metavar="FILE", help="the initrd (without --bundle)")
    parser.add_argument("--cmdline", metavar="TEXT", help="the kernel command line (without --bundle)")
    parser.add_argument("--vcpus", type=int, metavar="N", help="vCPUs (with --bundle: one it was measured for)")
    parser.add_argument("--vcpu-type", metavar="MODEL", help="QEMU CPU model, e.g. EPYC-v4 (default EPYC-v4)")
    parser.add_argument("--memory", dest="memory_mb", type=int, default=2048, metavar="MIB",
                        help="guest memory in MiB (default 2048)")
    parser.add_argument("--policy", metavar="POLICY", help="guest policy, e.g. 0x30000 (without --bundle)")
    parser.add_argument("--guest-features", metavar="HEX", help="SEV_FEATURES of the VMSAs (default 0x1)")
    parser.add_argument("--id-block", metavar="B64", help="ID block, base64 (without --bundle)")
    parser.add_argument("--id-auth", metavar="B64", help="ID auth block, base64 (without --bundle)")
    parser.add_argument("--author-key-enabled", action="store_true", help="the ID auth block's author key is used")
    parser.add_argument("--host-data", metavar="HEX", help="32 bytes bound into every report (default with --bundle: "
                        "the bundle's launch-configuration digest)")
    parser.add_argument("--cbitpos", type=int, metavar="N", help="C-bit position (default: this host's CPUID)")
    parser.add_argument("--reduced-phys-bits", type=int, metavar="N", help="(default: this host's CPUID)")
    parser.add_argument("--disk", dest="disks", action="append", metavar="PATH",
                        help="a qcow2 disk (virtio-blk); repeatable")
    parser.add_argument("--network", choices=["none", "user"], default="none",
                        help="none (default), or QEMU's user network")
    parser.add_argument("--forward", dest="forwards", action="append", metavar="HOST:GUEST",
                        help="with --network user: forward 127.0.0.1:HOST to the guest's GUEST (TCP); repeatable")
    parser.add_argument("--guest-forward", dest="guest_forwards", action="append", metavar="ADDRESS:PORT-HOSTPORT",
                        help="with --network user: the guest's connections to ADDRESS:PORT reach 127.0.0.1:HOSTPORT "
                             "(e.g. the key-release server for the agent); repeatable")
    parser.add_argument("--simulate", action="store_true",
                        help="a SIMULATED launch under TCG (no SEV-SNP hardware: OVMF checks the kernel hashes, a "
                             "host-side simulated AMD-SP signs the reports)")
    parser.add_argument("--simulated-amdsp", metavar="DIR", help="with --simulate: 'snpguard sim init' directory")
    parser.add_argument("--qemu", metavar="BINARY", default="qemu-system-x86_64",
                        help="QEMU binary (default qemu-system-x86_64)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the guest's name")
    parser.add_argument("--state-dir", metavar="DIR",
                        help=f"pidfile, QMP socket, serial log (default {DEFAULT_STATE_ROOT}/NAME)")
    add_json(parser)


def register(subparsers: Any) -> None:
    vm = subparsers.add_parser(
        "vm", help="launch, stop and describe SEV-SNP guests (QEMU)",
        description="Launch SEV-SNP guests with QEMU from a launch-artifacts bundle or explicit files, stop them "
                    "gracefully, and print the QEMU command line or the libvirt domain.",
        epilog=examples(EXAMPLE_BUNDLE, "snpguard vm status web-1", "snpguard vm stop web-1"))
    actions = vm.add_subparsers(dest="vm_action", metavar="ACTION", required=True,
                                help="start, stop, status, argv (the command line), libvirt (the domain XML)")
    start = actions.add_parser("start", help="launch the guest (nothing to do if this configuration runs)",
                               description="Launch the guest. The same configuration already running is no change; "
                                           "another one running is reported and kept unless --restart.",
                               epilog=examples(EXAMPLE_BUNDLE, EXAMPLE_SIM))
    _common(start)
    _launch_options(start)
    start.add_argument("--restart", action="store_true", help="relaunch even if it runs (with any configuration)")
    start.set_defaults(handler=_start)
    stop = actions.add_parser("stop", help="power the guest down (ACPI), then quit QEMU, then kill",
                              description="Ask the guest to power down over QMP; after --timeout seconds QEMU is "
                                          "told to quit, and killed as the last resort.",
                              epilog=examples("snpguard vm stop web-1", "snpguard vm stop web-1 --timeout 10"))
    _common(stop)
    stop.add_argument("--timeout", type=int, default=60, metavar="SECONDS", help="power-down grace (default 60)")
    stop.set_defaults(handler=_stop)
    status = actions.add_parser("status", help="running or not, pid, digest, guest state",
                                description="Whether the guest runs (its QEMU, by pid and process name), the "
                                            "digest of its configuration, and what QMP says of it.",
                                epilog=examples("snpguard vm status web-1 --json"))
    _common(status)
    status.set_defaults(handler=_status)
    for name, what in (("argv", "the QEMU command line"), ("libvirt", "the libvirt domain XML")):
        parser = actions.add_parser(name, help=f"print {what} for these options (launches nothing)",
                                    description=f"Print {what} that 'start' would use for these options.",
                                    epilog=examples(f"snpguard vm {name} web-1 --bundle debian-13.bundle.tar.gz "
                                                    "--cbitpos 51 --reduced-phys-bits 1"))
        _common(parser)
        _launch_options(parser)
        parser.set_defaults(handler=_describe, output=name)


def _options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    options = {k: v for k, v in vars(args).items() if k not in ("handler", "json", "vm_action", "command")}
    options.update(extra)
    return options


def _print(args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    if args.json:
        print_json(result)
    else:
        print(text)
    return 0


def _start(args: argparse.Namespace) -> int:
    result = apply(_options(args, state="restarted" if args.restart else "started"), run)
    text = f"{args.name}: {result['msg']}" + (f" (pid {result['pid']})" if result.get("pid") else "")
    if result.get("measurement"):
        text += f"\n  measurement {result['measurement']} (simulated AMD-SP)"
    text += f"\n  serial log {result.get('serial_log')}"
    return _print(args, result, text)


def _stop(args: argparse.Namespace) -> int:
    result = apply({"name": args.name, "state_dir": args.state_dir, "state": "stopped",
                    "stop_timeout": args.timeout}, run)
    return _print(args, result, f"{args.name}: {result['msg']}")


def _status(args: argparse.Namespace) -> int:
    state_dir = os.path.abspath(args.state_dir or os.path.join(DEFAULT_STATE_ROOT, args.name))
    status = Vm(args.name, state_dir, run).status()
    detail = f", pid {status['pid']}, guest {status.get('guest')}" if status["pid"] else ""
    text = f"{args.name}: {status['state']}{detail}"
    return _print(args, status, text)


def _describe(args: argparse.Namespace) -> int:
    result = apply(_options(args), run)
    if args.json:
        print_json(result)
    elif args.output == "libvirt":
        print(result["xml"], end="")
    else:
        print(" ".join(json.dumps(a) if (" " in a or not a) else a for a in result["argv"]))
    return 0

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard measure``: sev-snp-measure's flags and output, plus --json, --explain and ``diff``."""

from __future__ import annotations

import argparse
import base64
import json
from typing import Any

from ..plugins.module_utils.common.fileio import atomic_write, read_file
from ..plugins.module_utils.measurement.files import measure
from ..plugins.module_utils.measurement.snp_measure import build_config, cross_check
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.measure import Mode
from ..plugins.module_utils.snp.measure_explain import diff_launches, render_explain
from ..plugins.module_utils.snp.vcpu_types import CPU_SIGNATURES
from .common import Refused, add_json, examples, readable

# sev-snp-measure's names for the modes, used by its --verbose line.
_VERBOSE_NAMES = {Mode.SEV: "SEV", Mode.SEV_ES: "SEV_ES", Mode.SNP: "SEV_SNP", Mode.SNP_SVSM: "SEV_SNP_SVSM"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="compute SEV-SNP (and SEV/SEV-ES) launch measurements",
        description="Compute the launch digest a VM will report as MEASUREMENT. Takes the same flags as "
        "sev-snp-measure and prints the same output; --json, --explain and 'diff' are additions.",
        epilog=examples(
            "snpguard measure --ovmf OVMF.amdsev.fd --kernel vmlinuz --initrd initrd.img \\",
            "--append 'console=ttyS0 ro' --vcpus 1,2,4 --vcpu-type EPYC-v4",
            "snpguard measure --ovmf OVMF.amdsev.fd --vcpus 2 --vcpu-type EPYC-v4 --json",
            "snpguard measure diff expected.json actual.json",
        ),
    )
    parser.add_argument("--mode", choices=[m.value for m in Mode], default="snp", help="guest mode (default snp)")
    parser.add_argument("--vcpus", metavar="N[,N...]", help="number of guest vCPUs; a comma list gives one digest each")
    parser.add_argument("--vcpu-type", metavar="CPUTYPE", choices=list(CPU_SIGNATURES),
                        help=f"QEMU -cpu model of the guest ({', '.join(CPU_SIGNATURES)})")
    parser.add_argument("--vcpu-sig", metavar="VALUE", help="guest vCPU signature (CPUID(1).EAX)")
    parser.add_argument("--vcpu-family", metavar="FAMILY", type=int, help="guest vCPU family")
    parser.add_argument("--vcpu-model", metavar="MODEL", type=int, help="guest vCPU model")
    parser.add_argument("--vcpu-stepping", metavar="STEPPING", type=int, help="guest vCPU stepping")
    parser.add_argument("--vmm-type", metavar="VMMTYPE", default="QEMU", help="QEMU, ec2 or gce (default QEMU)")
    parser.add_argument("--ec2-vmsa", choices=["current", "legacy"], default=None,
                        help="EC2 vCPU start-up state: current (RDX=0x600) or legacy (RDX=0, before 2026)")
    parser.add_argument("--kvm-init", choices=["init2", "legacy"], default=None,
                        help="host SEV init: init2 (Linux >= 6.10, default) or legacy KVM_SEV_INIT")
    parser.add_argument("--ovmf", metavar="PATH", help="firmware image (OVMF.fd, single file as for -bios)")
    parser.add_argument("--ovmf-metadata", metavar="PATH",
                        help="JSON description of the firmware (sections, reset EIP, digest) instead of --ovmf")
    parser.add_argument("--kernel", metavar="PATH", help="kernel (-kernel)")
    parser.add_argument("--initrd", metavar="PATH", help="initrd (-initrd); needs --kernel")
    parser.add_argument("--append", metavar="CMDLINE", help="kernel command line (-append); needs --kernel")
    parser.add_argument("--guest-features", metavar="VALUE", default="0x1",
                        help="SEV_FEATURES of the guest (default 0x1)")
    parser.add_argument("--output-format", choices=["hex", "base64"], default="hex",
                        help="how to print the digest (default hex)")
    parser.add_argument("--snp-ovmf-hash", "--ovmf-hash", dest="ovmf_hash", metavar="HASH",
                        help="precomputed firmware launch digest (hex), instead of hashing the firmware pages")
    parser.add_argument("--svsm", metavar="PATH", help="SVSM binary (mode snp:svsm)")
    vars_group = parser.add_mutually_exclusive_group()
    vars_group.add_argument("--vars-size", type=int, metavar="SIZE", help="OVMF_VARS size in bytes (snp:svsm)")
    vars_group.add_argument("--vars-file", metavar="PATH", help="OVMF_VARS file (snp:svsm)")
    parser.add_argument("--dump-vmsa", action="store_true", help="write the measured VMSAs to vmsa<N>.bin")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print sev-snp-measure's 'Calculated ... guest measurement:' line")
    add_json(parser, "print a JSON document with the inputs' digests (what 'measure diff' compares)")
    parser.add_argument("--explain", action="store_true", help="show every measured region in launch order")
    parser.add_argument("--cross-check", action="store_true",
                        help="also compute with the sev-snp-measure package and fail on any disagreement")
    parser.set_defaults(handler=_run)
    actions = parser.add_subparsers(dest="measure_action", metavar="[diff]",
                                    help="diff: compare two saved measurements input by input")
    diff = actions.add_parser("diff", help="say which inputs make two launch configurations differ",
                              description="Compare two 'snpguard measure --json' outputs input by input and say "
                              "why each difference changes the measurement. Exit 0 when they match, 1 when they "
                              "differ.",
                              epilog=examples("snpguard measure diff expected.json actual.json",
                                              "snpguard measure diff expected.json actual.json --json"))
    diff.add_argument("a", metavar="A.json", help="the first 'snpguard measure --json' output")
    diff.add_argument("b", metavar="B.json", help="the second one")
    add_json(diff, "print the differences as JSON", dest="diff_json")
    diff.set_defaults(handler=_diff)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    vars_size = args.vars_size
    if args.vars_file:
        import os

        try:
            vars_size = os.path.getsize(args.vars_file)
        except OSError as exc:
            raise SnpError(f"cannot read file: {exc.strerror}", field="vars_file", path=args.vars_file) from exc
    if args.ovmf is None and args.ovmf_metadata is None:
        raise SnpError("is required (or --ovmf-metadata)", field="--ovmf")
    return {
        "mode": args.mode, "vcpus": args.vcpus, "vcpu_type": args.vcpu_type, "vcpu_sig": args.vcpu_sig,
        "vcpu_family": args.vcpu_family, "vcpu_model": args.vcpu_model, "vcpu_stepping": args.vcpu_stepping,
        "vmm_type": args.vmm_type, "ec2_vmsa": args.ec2_vmsa, "kvm_init": args.kvm_init, "ovmf": args.ovmf,
        "ovmf_metadata": args.ovmf_metadata, "kernel": args.kernel, "initrd": args.initrd, "append": args.append,
        "guest_features": args.guest_features, "ovmf_hash": args.ovmf_hash, "svsm": args.svsm,
        "vars_size": vars_size,
    }


def _format(digest: bytes, output_format: str) -> str:
    return digest.hex() if output_format == "hex" else base64.b64encode(digest).decode()


def _run(args: argparse.Namespace) -> int:
    config = build_config(_options(args))
    if config.mode in (Mode.SNP, Mode.SEV_ES, Mode.SNP_SVSM) and args.vcpus is None:
        raise SnpError(f"missing --vcpus N in guest mode '{config.mode.value}'", field="--vcpus")
    result = measure(config)
    checked = _cross_check(config, result) if args.cross_check else None
    if args.dump_vmsa and config.mode is not Mode.SNP_OVMF_HASH:
        _dump_vmsas(result)
    if args.json:
        doc = result.as_dict(explain=args.explain)
        if checked is not None:
            doc["cross_check"] = {"sev-snp-measure": checked}
        print(json.dumps(doc, indent=2))
        return 0
    if args.explain:
        print(render_explain(result))
        return 0
    if config.mode is Mode.SNP_OVMF_HASH:
        print(result.digest.hex())
        return 0
    for count, digest in result.digests.items():
        text = _format(digest, args.output_format)
        if args.verbose:
            text = f"Calculated {_VERBOSE_NAMES[config.mode]} guest measurement: {text}"
        print(text if len(result.digests) == 1 else f"vcpus={count} {text}")
    return 0


def _cross_check(config: Any, result: Any) -> dict[str, str]:
    """``cross_check``, with a disagreement as a failed check (exit 1) rather than bad input."""
    try:
        return cross_check(config, result)
    except SnpError as exc:
        if exc.field == "cross_check" and "disagrees" in exc.message:
            raise Refused(exc.message, field="cross_check", code="cross_check_failed") from exc
        raise


def _dump_vmsas(result: Any) -> None:
    """Write vmsa<N>.bin as sev-snp-measure does (to compare with what a hypervisor dumps)."""
    if not result.vmsa_pages:
        raise SnpError("is not available in the selected mode", field="--dump-vmsa")
    for index, page in enumerate(result.vmsa_pages):
        atomic_write(f"vmsa{index}.bin", page)


def _diff(args: argparse.Namespace) -> int:
    docs = []
    for name, path in (("A.json", args.a), ("B.json", args.b)):
        try:
            docs.append(json.loads(read_file(path, name, limit=64 << 20)))
        except json.JSONDecodeError as exc:
            raise SnpError(f"not JSON: {exc}", field=name, path=path) from exc
    differences = diff_launches(docs[0], docs[1])
    differ = bool(differences) or docs[0].get("measurements") != docs[1].get("measurements")
    if args.diff_json:
        print(json.dumps({"differ": differ, "differences": [d.as_dict() for d in differences]}, indent=2))
    else:
        print(render_diff(docs[0], docs[1], differences))
    return 1 if differ else 0


# -- measure diff for people: values as they are written on the command line, never Python reprs ------------------


def _readable(field: str, value: Any, inputs: dict[str, Any]) -> list[str]:
    """One side of a difference as lines of text."""
    if field == "cmdline_sha256" and isinstance(value, dict):
        append, digest = value.get("append"), value.get("sha256")
        if digest is None:
            return ["no command line (no kernel)"]
        return [f"{'empty' if append is None else json.dumps(append)} (SHA-256 {readable(digest)})"]
    if field == "vcpu_sig" and inputs.get("vcpu_type"):
        return [f"{readable(value)} ({inputs['vcpu_type']})"]
    if field in ("kernel", "initrd") and isinstance(value, bool):
        return ["present" if value else "absent"]
    if value is None and field.split(".")[0] in ("kernel", "initrd", "svsm"):
        return [f"no {field.split('.')[0]}"]
    if field.endswith(".sha256") or field.endswith(".sha384"):
        source = inputs.get(field.split(".")[0])
        if isinstance(source, dict) and source.get("path"):
            extra = f", {source['size']} bytes" if isinstance(source.get("size"), int) else ""
            return [f"{readable(value)} ({source['path']}{extra})"]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [readable(item) for item in value]
    return [readable(value)]


def _vcpus(count: str, mode: Any) -> str:
    if str(count) == "0":
        return f"mode {mode} (no VMSA)"
    return f"{count} vCPU{'s' if str(count) != '1' else ''}"


def render_diff(left: dict[str, Any], right: dict[str, Any], differences: list[Any]) -> str:
    """``snpguard measure diff`` for people: what differs, why it matters, and the measurements."""
    lines = []
    a_m, b_m = left.get("measurements"), right.get("measurements")
    a_m = a_m if isinstance(a_m, dict) else {}
    b_m = b_m if isinstance(b_m, dict) else {}
    if not differences:
        if a_m == b_m:
            return "the two launch configurations are identical and measure the same"
        lines.append("the inputs are identical but the measurements differ: the two were computed by "
                     "different tools or versions; recompute both with this one")
    else:
        lines.append(f"{len(differences)} inputs differ:" if len(differences) > 1 else "1 input differs:")
    for item in differences:
        lines.append(f"- {item.field}: {item.why}")
        for side, value, doc in (("a", item.left, left), ("b", item.right, right)):
            shown = _readable(item.field, value, doc["inputs"])
            if len(shown) == 1:
                lines.append(f"    {side}: {shown[0]}")
            else:
                lines.append(f"    {side}:")
                lines.extend(f"       {line}" for line in shown)
    counts = sorted(set(a_m) | set(b_m), key=lambda c: int(c) if str(c).isdigit() else 0)
    if counts:
        lines.append("measurements:")
    for count in counts:
        a_value, b_value = a_m.get(count), b_m.get(count)
        label = _vcpus(count, (left if a_value else right)["inputs"].get("mode"))
        if a_value is not None and a_value == b_value:
            lines.append(f"  {label}: same, {a_value}")
            continue
        lines.append(f"  {label}: " + ("differ" if a_value and b_value else f"only in {'a' if a_value else 'b'}"))
        for side, value in (("a", a_value), ("b", b_value)):
            lines.append(f"    {side}: {value if value else 'not measured'}")
    return "\n".join(lines)

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard report show|verify|fetch`` and ``snpguard certs fetch``."""

from __future__ import annotations

import argparse
import base64
import json
import os
from typing import Any

from ..plugins.module_utils.attestation.kds_cache import KdsClient
from ..plugins.module_utils.attestation.kds_fetch import https_get
from ..plugins.module_utils.attestation.report_sources import get_report
from ..plugins.module_utils.attestation.snp_report_verify import verify_from_options
from ..plugins.module_utils.common.fileio import atomic_write, read_file
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.options import parse_int
from ..plugins.module_utils.snp.policy import GuestPolicy
from ..plugins.module_utils.snp.report import REPORT_SIZE, parse_report
from ..plugins.module_utils.snp.tcb import Product
from .common import add_json, examples, readable

_EXAMPLE_MEASUREMENT = ("195b01b74976a1faba13bd85eaf787958f0a46e6dddd45c5bdbf8673522777842b8057ae5d866b75416efb62"
                        "012deaa3")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "snpguard", "kds")


def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report", help="show, verify or fetch SEV-SNP attestation reports",
        description="Decode an attestation report, verify it completely (AMD chain, CRL, VCEK/VLEK binding, "
                    "signature, every expectation you give), or get one inside an SEV-SNP guest.",
        epilog=examples("snpguard report show report.bin",
                        "snpguard report verify --report report.bin --certs-table certs.bin --measurement HEX",
                        "snpguard report fetch --out report.bin --certs-out certs.bin"))
    actions = report.add_subparsers(dest="report_action", metavar="ACTION", required=True,
                                    help="show, verify or fetch")

    show = actions.add_parser(
        "show", help="decode a report",
        description="Print every field of a report, the decoded policy, platform flags and TCBs. A version 2 "
                    "report does not name its product: give --product to decode its TCBs.",
        epilog=examples("snpguard report show report.bin", "snpguard report show --product Genoa --json v2.bin"))
    show.add_argument("file", metavar="FILE", help="the report (1184 bytes, raw)")
    show.add_argument("--product", choices=[p.value for p in Product], help="decode TCBs for this product (v2)")
    add_json(show, "print the decoded report as JSON")
    show.set_defaults(handler=_show)

    verify = actions.add_parser(
        "verify", help="verify a report; exit status 0 only when it is valid",
        description="Check a report against AMD's pinned roots (chain, CRL, VCEK/VLEK binding, signature) and "
                    "every expectation given. Certificates come from the files given, --certs-dir, the "
                    "certificate table, the cache, or AMD KDS (unless --offline). Exit 0 when valid, 1 when "
                    "refused, 2 on bad options, 3 when a file or KDS cannot be read.",
        epilog=examples(
            "snpguard report verify --report report.bin --certs-dir certs/ --offline \\",
            f"--measurement {_EXAMPLE_MEASUREMENT} \\",
            "--min-tcb snp=22 --policy smt=1",
            "snpguard report verify --report report.bin --certs-table certs.bin --simulated-root lab/ark.pem"))
    certs_group = verify.add_argument_group("certificates")
    certs_group.add_argument("--report", required=True, metavar="FILE", help="the report to verify (raw)")
    certs_group.add_argument("--vcek", "--vlek", dest="vek", metavar="FILE", help="the VCEK or VLEK (PEM or DER)")
    certs_group.add_argument("--ask", "--asvk", dest="ask", metavar="FILE",
                             help="the ASK, or the ASVK for a VLEK (PEM or DER)")
    certs_group.add_argument("--ark", metavar="FILE", help="the ARK (must be AMD's pinned root or --simulated-root)")
    certs_group.add_argument("--crl", metavar="FILE", help="the CRL from KDS (signed by the ARK)")
    certs_group.add_argument("--certs-dir", metavar="DIR",
                             help="directory with vcek.der/vlek.der, ask.pem/asvk.pem, ark.pem, cert_chain.pem, "
                                  "crl.der ('certs fetch --out-dir' writes one)")
    certs_group.add_argument("--certs-table", metavar="FILE",
                             help="certificate table of an extended report (auxblob)")
    certs_group.add_argument("--cache-dir", metavar="DIR", default=default_cache_dir(),
                             help="KDS certificate cache (default ~/.cache/snpguard/kds)")
    certs_group.add_argument("--offline", action="store_true", help="never contact KDS")
    certs_group.add_argument("--fetch-crl", action="store_true", help="get the CRL from KDS (or the cache)")
    certs_group.add_argument("--require-crl", action="store_true", help="refuse without a CRL")
    certs_group.add_argument("--product", choices=[p.value for p in Product],
                             help="the product of a version 2 report (v3+ reports name it)")
    certs_group.add_argument("--simulated-root", metavar="FILE",
                             help="trust this SIMULATED AMD-SP root as well (test labs only; see 'snpguard sim')")
    certs_group.add_argument("--at", dest="verification_time", metavar="ISO8601",
                             help="verify as of this time (archived reports)")
    expect = verify.add_argument_group("expectations (all that are given must hold)")
    expect.add_argument("--measurement", dest="measurements", action="append", metavar="HEX",
                        help="an accepted launch measurement (96 hex digits); repeatable")
    expect.add_argument("--host-data", metavar="HEX", help="HOST_DATA (64 hex digits)")
    expect.add_argument("--report-data", metavar="HEX", help="REPORT_DATA (128 hex digits), e.g. a nonce's hash")
    expect.add_argument("--id-key-digest", dest="id_key_digests", action="append", metavar="HEX",
                        help="an accepted ID_KEY_DIGEST; repeatable")
    expect.add_argument("--author-key-digest", dest="author_key_digests", action="append", metavar="HEX",
                        help="an accepted AUTHOR_KEY_DIGEST (AUTHOR_KEY_EN must be set); repeatable")
    expect.add_argument("--family-id", metavar="HEX", help="FAMILY_ID (32 hex digits)")
    expect.add_argument("--image-id", metavar="HEX", help="IMAGE_ID (32 hex digits)")
    expect.add_argument("--min-guest-svn", type=int, metavar="N", help="GUEST_SVN at least N")
    expect.add_argument("--vmpl", type=int, metavar="N", help="the report was requested at VMPL N")
    expect.add_argument("--allow-debug", action="store_true", help="accept a guest policy that allows debugging")
    expect.add_argument("--policy", action="append", metavar="NAME=BOOL",
                        help="required guest policy flag, e.g. smt=0; repeatable")
    expect.add_argument("--min-abi", metavar="MAJOR.MINOR", help="minimum firmware ABI the policy demands")
    expect.add_argument("--platform", action="append", metavar="NAME=BOOL",
                        help="required platform flag, e.g. smt_enabled=0; repeatable")
    expect.add_argument("--min-tcb", action="append", metavar="COMPONENT=N",
                        help="minimum TCB component, e.g. snp=20; repeatable")
    expect.add_argument("--allow-provisional-firmware", action="store_true",
                        help="accept firmware whose committed TCB and version are behind the current ones")
    expect.add_argument("--chip-id", dest="chip_ids", action="append", metavar="HEX",
                        help="an accepted CHIP_ID (128 hex digits); repeatable")
    expect.add_argument("--min-report-version", type=int, metavar="N", help="report VERSION at least N")
    expect.add_argument("--launch-mit-vector", metavar="BITS", help="required LAUNCH_MIT_VECTOR bits (v5 reports)")
    expect.add_argument("--current-mit-vector", metavar="BITS", help="required CURRENT_MIT_VECTOR bits (v5)")
    expect.add_argument("--signing-key", dest="signing_keys", action="append", choices=["VCEK", "VLEK"],
                        help="accepted signing key type; repeatable (default both)")
    add_json(verify, "print the checks and the decoded report as JSON")
    verify.set_defaults(handler=_verify)

    fetch = actions.add_parser(
        "fetch", help="get a report from this SEV-SNP guest",
        description="Ask the AMD-SP for a report through configfs-tsm or /dev/sev-guest (or a SIMULATED AMD-SP "
                    "directory in test labs) and write it to --out. Exit 3 when this is not an SEV-SNP guest.",
        epilog=examples("snpguard report fetch --report-data 00112233445566778899aabbccddeeff00112233445566778899"
                        "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff \\",
                        "--out report.bin --certs-out certs.bin",
                        "snpguard report fetch --simulated-amdsp ./lab/simulated-amdsp --out report.bin"))
    fetch.add_argument("--report-data", metavar="HEX", help="64 bytes (128 hex digits); default all zero")
    fetch.add_argument("--vmpl", type=int, default=0, metavar="N", help="VMPL of the request, 0..3 (default 0)")
    fetch.add_argument("--out", metavar="FILE", required=True, help="write the report (raw 1184 bytes) here")
    fetch.add_argument("--certs-out", metavar="FILE", help="write the host's certificate table here")
    fetch.add_argument("--simulated-amdsp", metavar="DIR",
                       help="sign with a SIMULATED AMD-SP directory ('snpguard sim init'; test labs only)")
    fetch.set_defaults(handler=_fetch)

    certs = subparsers.add_parser(
        "certs", help="AMD KDS certificates",
        description="Get the certificates a report needs from AMD's Key Distribution Service, through the cache.",
        epilog=examples("snpguard certs fetch --report report.bin --out-dir certs/"))
    certs_actions = certs.add_subparsers(dest="certs_action", metavar="ACTION", required=True,
                                         help="fetch: VCEK, chain and CRL for a report")
    certs_fetch = certs_actions.add_parser(
        "fetch", help="fetch the VCEK, chain and CRL for a report from KDS",
        description="Fetch the VCEK of the report's chip and TCB, the ASK/ARK chain and the CRL into the cache "
                    "(KDS is contacted only for what is missing) and optionally into a certificate directory.",
        epilog=examples("snpguard certs fetch --report report.bin --out-dir certs/",
                        "snpguard certs fetch --report v2.bin --product Genoa"))
    certs_fetch.add_argument("--report", required=True, metavar="FILE", help="the report (raw)")
    certs_fetch.add_argument("--product", choices=[p.value for p in Product],
                             help="the product of a version 2 report (v3+ reports name it)")
    certs_fetch.add_argument("--out-dir", metavar="DIR", help="also write vcek.der, cert_chain.pem, crl.der here")
    certs_fetch.add_argument("--cache-dir", metavar="DIR", default=default_cache_dir(),
                             help="KDS certificate cache (default ~/.cache/snpguard/kds)")
    certs_fetch.set_defaults(handler=_certs_fetch)


def _pairs(values: list[str] | None, option: str, cast: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SnpError(f"{item!r} is not NAME=VALUE", field=option)
        if cast is bool:
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise SnpError(f"{item!r}: {value!r} is not a boolean", field=option)
            out[name.strip()] = lowered in ("1", "true", "yes", "on")
        else:
            number = parse_int(value, f"{option}.{name.strip()}")
            if number is None:
                raise SnpError(f"{item!r}: no value", field=option)
            out[name.strip()] = number
    return out


def _show(args: argparse.Namespace) -> int:
    report = parse_report(read_file(args.file, "report", REPORT_SIZE * 2))
    product = Product.parse(args.product) if args.product else report.product_from_cpuid
    doc = report.as_dict(product)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(render_report(doc, report.policy))
    return 0


def render_report(doc: dict[str, Any], policy: int) -> str:
    lines = [f"SEV-SNP attestation report, version {doc['version']}"
             + (f", {doc['product']}" if doc.get("product") else " (product unknown: v2 report, pass --product)")]
    order = ["measurement", "report_data", "host_data", "policy", "vmpl", "guest_svn", "family_id", "image_id",
             "id_key_digest", "author_key_digest", "author_key_en", "signing_key", "mask_chip_key", "chip_id",
             "platform_info", "current_version", "committed_version", "report_id", "report_id_ma",
             "launch_mit_vector", "current_mit_vector", "cpuid"]
    for key in order:
        if doc.get(key) is not None:
            lines.append(f"  {key:<20} {readable(doc[key])}")
    try:
        lines.append("  policy decoded:      " + "; ".join(GuestPolicy.from_int(policy).describe()))
    except SnpError as exc:
        lines.append(f"  policy decoded:      INVALID ({exc.message})")
    flags = [name for name, on in doc["platform_info_flags"].items() if on]
    lines.append(f"  platform flags:      {', '.join(flags) or 'none'}")
    for name in ("current", "reported", "committed", "launch"):
        tcb = doc[f"{name}_tcb"]
        parts = " ".join(f"{k}={v}" for k, v in tcb.items() if k != "raw")
        lines.append(f"  {name + '_tcb':<20} {tcb['raw']} {parts}")
    if doc.get("reserved_nonzero"):
        lines.append(f"  RESERVED BYTES SET:  {', '.join(doc['reserved_nonzero'])}")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    options = {name: value for name, value in vars(args).items() if name not in ("handler", "command", "json")}
    options["policy"] = _pairs(args.policy, "--policy", bool)
    options["platform_info"] = _pairs(args.platform, "--platform", bool)
    options["min_tcb"] = _pairs(args.min_tcb, "--min-tcb", int)
    if args.certs_table:
        options["certs_b64"] = base64.b64encode(read_file(args.certs_table, "--certs-table")).decode()
    attestation = verify_from_options(options, fetch=https_get, raise_on_failure=False)
    if args.json:
        print(json.dumps(attestation.as_dict(), indent=2))
    else:
        for result in attestation.results:
            mark = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}[result.status]
            line = f"{mark} {result.name:<28} {result.detail}"
            if result.failed and (result.expected is not None or result.actual is not None):
                shown = result.as_dict()
                line += f"\n     expected: {readable(shown['expected'])}\n     actual:   {readable(shown['actual'])}"
            print(line)
        print("VALID" if attestation.ok else "REFUSED")
    return 0 if attestation.ok else 1


def _fetch(args: argparse.Namespace) -> int:
    data = bytes(64)
    if args.report_data:
        try:
            data = bytes.fromhex(args.report_data)
        except ValueError:
            raise SnpError("is not hex", field="--report-data") from None
    got = get_report(data, args.vmpl, want_certs=bool(args.certs_out), simulated_amdsp=args.simulated_amdsp)
    atomic_write(args.out, got.report)
    if args.certs_out and got.certs:
        atomic_write(args.certs_out, got.certs)
    print(f"wrote {args.out} ({got.source})" + (f" and {args.certs_out}" if args.certs_out and got.certs else ""))
    return 0


def _certs_fetch(args: argparse.Namespace) -> int:
    report = parse_report(read_file(args.report, "--report", REPORT_SIZE * 2))
    product = report.product_from_cpuid or (Product.parse(args.product) if args.product else None)
    if product is None:
        raise SnpError("a version-2 report does not name its product; pass --product", field="--product")
    client = KdsClient(fetch=https_get, cache_dir=args.cache_dir)
    from ..plugins.module_utils.snp.crypto_guard import serialization

    vlek = report.signing_key is not None and report.signing_key.name == "VLEK"
    outputs: dict[str, bytes] = {}
    if not vlek:
        outputs["vcek.der"] = client.vcek(product, report).public_bytes(serialization.Encoding.DER)
    ask, ark = client.chain(product, vlek)
    outputs["cert_chain.pem"] = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (ask, ark))
    outputs["crl.der"] = client.crl(product, vlek).public_bytes(serialization.Encoding.DER)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for name, data in outputs.items():
            atomic_write(os.path.join(args.out_dir, name), data)
    print(f"{product.value}: fetched {', '.join(outputs)} (cache {args.cache_dir})")
    return 0

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Verifications per second: attest() on real reports vs the bare ECDSA P-384 verify, same run.

Inputs: every report in ../shared/vectors that verifies (36), each with its own VCEK/VLEK,
ASK/ASVK and ARK, at a fixed clock inside the VEK's validity.  ``attest`` gets the raw
1184 bytes, as a server would, with a warm certificate cache (the chain checks of a known
chain are memoised, so what remains is parsing, the report checks and one ECDSA verify).
The baseline is ``public_key.verify`` of the same cryptography build on the same messages
and signatures (DER prepared beforehand).  Rounds alternate between the two so machine
noise hits both alike; the ratio of median rates is what to read.

    .venv/bin/python bench/verify_bench.py [--rounds N] [--passes N] [--vectors DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import benchlib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--passes", type=int, default=5, help="passes over all reports per timed batch")
    parser.add_argument("--vectors", type=Path, default=benchlib.vectors_default())
    args = parser.parse_args()

    benchlib.import_collection()
    import cryptography
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import load_certificate
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.validate import Expectations
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import Collateral, TrustSettings

    manifest = json.loads((args.vectors / "MANIFEST.json").read_text())
    cases = []
    for entry in manifest:
        if entry["kind"] != "attestation_report" or entry["expected"].get("report_signature_verifies") is not True:
            continue
        files, decoded = entry["files"], entry["decoded"]

        def cert(name: str, files: dict = files) -> object:
            return load_certificate((args.vectors / files[name]).read_bytes(), field=name)

        vek = cert("vek")
        collateral = Collateral(vek=vek, ask=cert("ask" if "ask" in files else "asvk"), ark=cert("ark"))
        trust = TrustSettings(now=vek.not_valid_before_utc + datetime.timedelta(days=1))
        # the three reports on provisional firmware are accepted only with the allowance
        provisional = decoded["current_tcb_raw"] != decoded["committed_tcb_raw"]
        expect = Expectations(allow_provisional_firmware=provisional)
        report = (args.vectors / files["report"]).read_bytes()
        signature = encode_dss_signature(int.from_bytes(report[0x2A0:0x2E8], "little"),
                                         int.from_bytes(report[0x2E8:0x330], "little"))
        cases.append((report, collateral, trust, expect, Product(entry["product"]), vek.public_key(),
                      report[:0x2A0], signature))
    if len(cases) != 36:
        print(f"expected 36 verifying reports, found {len(cases)}", file=sys.stderr)
        return 1
    algorithm = ec.ECDSA(hashes.SHA384())

    def ours() -> None:
        for report, collateral, trust, expect, product, *_ecdsa_inputs in cases:
            attest(report, collateral, trust, expect, expected_product=product)

    def raw() -> None:
        for *_attest_inputs, public_key, message, signature in cases:
            public_key.verify(signature, message, algorithm)

    ours()  # warm the certificate cache (and prove every report verifies)
    raw()
    per_batch = len(cases) * args.passes
    rates: dict[str, list[float]] = {"attest()": [], "raw ECDSA verify": []}
    funcs: dict[str, Callable[[], None]] = {"attest()": ours, "raw ECDSA verify": raw}
    for index in range(args.rounds):
        order = list(funcs) if index % 2 == 0 else list(reversed(funcs))
        for name in order:
            start = time.perf_counter()
            for _pass in range(args.passes):
                funcs[name]()
            rates[name].append(per_batch / (time.perf_counter() - start))
    print(f"inputs: {len(cases)} real reports (cryptography {cryptography.__version__}), {args.rounds} alternating "
          f"rounds of {per_batch} verifications each")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"{name:>17}: median {value:8.0f} verifications/s  (max {max(rates[name]):.0f})")
    ratio = medians["attest()"] / medians["raw ECDSA verify"]
    print(f"ratio attest()/raw verify (median rate): {ratio:.2f}  (target >= 0.70)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

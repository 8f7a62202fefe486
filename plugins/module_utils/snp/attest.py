# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""One call that decides about a report: parse, verify authenticity, validate expectations.

Used unchanged by the module, the CLI and the key-release server.  It raises
``VerificationError`` naming the first failed check, or returns every check's result.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import CheckList, CheckResult
from .report import AttestationReport, parse_report
from .tcb import Product
from .validate import Expectations, validate_report
from .verify import Collateral, TrustSettings, verify_report


@dataclass
class Attestation:
    report: AttestationReport
    product: Product | None
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return not any(result.failed for result in self.results)

    def as_dict(self) -> dict[str, object]:
        return {
            "valid": self.ok,
            "product": self.product.value if self.product else None,
            "report": self.report.as_dict(self.product),
            "checks": [result.as_dict() for result in self.results],
        }


def attest(report: bytes | AttestationReport, collateral: Collateral, trust: TrustSettings | None = None,
           expect: Expectations | None = None, *, expected_product: Product | None = None,
           raise_on_failure: bool = True) -> Attestation:
    parsed = report if isinstance(report, AttestationReport) else parse_report(report)
    checks = CheckList()
    product = verify_report(parsed, collateral, trust or TrustSettings(), checks, expected_product)
    validate_report(parsed, product, expect or Expectations(), checks)
    if raise_on_failure:
        checks.raise_if_failed()
    return Attestation(parsed, product, checks.results)

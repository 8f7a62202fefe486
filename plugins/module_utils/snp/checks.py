# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Named check results, and the one error a refusal raises.

Every refusal names the check that failed and shows expected against actual, in the
audit log and to the caller; ``CheckList`` also keeps every result for display.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import SnpError


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""
    expected: object = None
    actual: object = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"check": self.name, "status": self.status, "detail": self.detail}
        if self.expected is not None or self.actual is not None:
            out["expected"] = _show(self.expected)
            out["actual"] = _show(self.actual)
        return out

    def message(self) -> str:
        text = self.detail
        if self.expected is not None or self.actual is not None:
            text += f" (expected {_show(self.expected)}, got {_show(self.actual)})"
        return text


def _show(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, list | tuple | set | frozenset):
        return [_show(item) for item in value]
    return value


class VerificationError(SnpError):
    """A report was refused; ``check`` names the first failed check, ``results`` has them all."""

    def __init__(self, failed: CheckResult, results: list[CheckResult]) -> None:
        super().__init__(failed.message(), field=failed.name)
        self.check = failed.name
        self.expected = failed.expected
        self.actual = failed.actual
        self.results = results

    def __str__(self) -> str:
        return f"check {self.check} failed: {self.message}"

    def as_dict(self) -> dict[str, object]:  # type: ignore[override]
        out: dict[str, object] = dict(super().as_dict())
        out["check"] = self.check
        out["checks"] = [result.as_dict() for result in self.results]
        return out


@dataclass
class CheckList:
    results: list[CheckResult] = field(default_factory=list)

    def passed(self, name: str, detail: str = "", expected: object = None, actual: object = None) -> None:
        self.results.append(CheckResult(name, "pass", detail, expected, actual))

    def failed(self, name: str, detail: str, expected: object = None, actual: object = None) -> None:
        self.results.append(CheckResult(name, "fail", detail, expected, actual))

    def skipped(self, name: str, detail: str) -> None:
        self.results.append(CheckResult(name, "skip", detail))

    def check(self, name: str, ok: bool, detail: str, expected: object = None, actual: object = None) -> bool:
        (self.passed if ok else self.failed)(name, detail, expected, actual)
        return ok

    def attempt(self, name: str, action: Callable[[], str | None]) -> bool:
        """Run ``action``; an ``SnpError`` it raises becomes a failed check with its message."""
        try:
            detail = action()
        except SnpError as exc:
            self.failed(name, exc.message)
            return False
        self.passed(name, detail or "")
        return True

    def ok(self, name: str) -> bool:
        return any(r.name == name and r.status == "pass" for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if result.failed]

    def raise_if_failed(self) -> None:
        failures = self.failures
        if failures:
            raise VerificationError(failures[0], self.results)

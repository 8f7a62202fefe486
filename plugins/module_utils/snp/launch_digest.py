# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The SNP launch digest: the chain of SHA-384 hashes the AMD-SP extends per page.

Each measured 4 KiB page extends the digest with ``SHA-384(PAGE_INFO)``, PAGE_INFO
being the 0x70-byte structure of the SEV-SNP ABI (SNP_LAUNCH_UPDATE).  The final
value is the report's MEASUREMENT.  Every update is recorded as a ``Step`` so the
digest can be explained region by region, in launch order.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

PAGE_SIZE = 0x1000
LD_SIZE = 48
PAGE_INFO_SIZE = 0x70
# VMSA pages are recorded at GPA (u64)-1, page aligned, bits above 51 cleared.
VMSA_GPA = 0xFFFFFFFFF000
_ZERO_CONTENTS = bytes(LD_SIZE)
_TAIL = struct.Struct("<HBBBBBBQ")


class PageType(enum.IntEnum):
    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


@dataclass(frozen=True)
class Step:
    """One region added to the launch digest (for ``explain``)."""

    what: str
    page_type: PageType
    gpa: int
    pages: int
    digest_after: bytes
    detail: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "what": self.what,
            "page_type": self.page_type.name,
            "gpa": f"0x{self.gpa:x}",
            "pages": self.pages,
            "digest_after": self.digest_after.hex(),
        }
        out.update(self.detail)
        return out


class LaunchDigest:
    """Accumulates the launch digest exactly as the AMD-SP does during SNP_LAUNCH_UPDATE."""

    def __init__(self, seed: bytes = _ZERO_CONTENTS) -> None:
        if len(seed) != LD_SIZE:
            raise ValueError("launch digest seed must be 48 bytes")
        self._ld = seed
        self.steps: list[Step] = []

    @property
    def value(self) -> bytes:
        return self._ld

    def _page(self, page_type: PageType, gpa: int, contents: bytes) -> None:
        info = self._ld + contents + _TAIL.pack(PAGE_INFO_SIZE, page_type, 0, 0, 0, 0, 0, gpa)
        self._ld = hashlib.sha384(info).digest()

    def _record(self, what: str, page_type: PageType, gpa: int, pages: int, detail: dict[str, object]) -> None:
        self.steps.append(Step(what, page_type, gpa, pages, self._ld, detail))

    def add_seeded(self, what: str, detail: dict[str, object]) -> None:
        """Record that the digest so far was given, not computed (``--snp-ovmf-hash``)."""
        self._record(what, PageType.NORMAL, 0, 0, detail)

    def normal_pages(self, what: str, gpa: int, data: bytes | memoryview, **detail: object) -> None:
        """Measure ``data`` page by page: contents are SHA-384 of each page."""
        if len(data) % PAGE_SIZE:
            raise ValueError(f"{what}: size {len(data)} is not a multiple of 4096")
        view = memoryview(data)
        sha384 = hashlib.sha384
        for offset in range(0, len(view), PAGE_SIZE):
            self._page(PageType.NORMAL, gpa + offset, sha384(view[offset : offset + PAGE_SIZE]).digest())
        self._record(what, PageType.NORMAL, gpa, len(view) // PAGE_SIZE, dict(detail))

    def empty_pages(self, what: str, page_type: PageType, gpa: int, size: int, **detail: object) -> None:
        """ZERO, UNMEASURED, SECRETS and CPUID pages: contents field is all zero."""
        if size % PAGE_SIZE:
            raise ValueError(f"{what}: size {size} is not a multiple of 4096")
        for offset in range(0, size, PAGE_SIZE):
            self._page(page_type, gpa + offset, _ZERO_CONTENTS)
        self._record(what, page_type, gpa, size // PAGE_SIZE, dict(detail))

    def vmsa_page(self, what: str, page: bytes, **detail: object) -> None:
        if len(page) != PAGE_SIZE:
            raise ValueError("a VMSA page is 4096 bytes")
        contents = hashlib.sha384(page).digest()
        self._page(PageType.VMSA, VMSA_GPA, contents)
        detail = dict(detail, vmsa_sha384=contents.hex())
        self._record(what, PageType.VMSA, VMSA_GPA, 1, detail)

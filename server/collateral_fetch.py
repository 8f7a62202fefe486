# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Certificates for a report, without ever holding up the event loop for AMD KDS.

Attestation handlers run on the event loop.  Whatever can be found locally (the
certificates the agent sent, the KDS disk cache) is used at once; only a VCEK that is
nowhere local goes to KDS, and then:

* in a worker thread, at most ``kds_concurrency`` at a time per worker (more are refused
  at once, naming ``collateral.busy``: an agent retries, a flood does not queue);
* with one short timeout (``kds_timeout``) and no retries or sleeps inside a request;
* a failure is remembered per (product, chip id, REPORTED_TCB) for ``kds_failure_ttl``
  seconds, so a chip that KDS does not know costs one fetch, not one per request.

The failure memory lives in this process (like the disk cache it is only an
optimisation: a replica that has not seen a failure asks KDS once itself).
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from dataclasses import dataclass

import anyio
import anyio.to_thread

from ..plugins.module_utils.attestation.collateral import CollateralSources, resolve_collateral
from ..plugins.module_utils.attestation.kds_cache import KdsClient, NotCached
from ..plugins.module_utils.attestation.kds_fetch import https_get
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.kds import KDS_BASE
from ..plugins.module_utils.snp.report import AttestationReport
from ..plugins.module_utils.snp.verify import Collateral
from .config import Settings

MAX_REMEMBERED = 10_000


@dataclass
class Refused(Exception):
    """Collateral could not be assembled: ``check`` names why (``collateral`` or ``collateral.busy``)."""

    check: str
    detail: str


class CollateralFetcher:
    """One per worker process: the local-first resolution, the KDS limiter and the failure memory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        base = settings.kds_url.rstrip("/") if settings.kds_url else KDS_BASE
        self.local = KdsClient(fetch=None, cache_dir=settings.kds_cache_dir, offline=True, base=base)
        self.online = None if settings.offline else KdsClient(
            fetch=functools.partial(https_get, timeout=settings.kds_timeout, retries=0),
            cache_dir=settings.kds_cache_dir, offline=False, base=base)
        self._limiter: anyio.CapacityLimiter | None = None
        self._failures: collections.OrderedDict[tuple[object, ...], tuple[float, str]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # created inside the event loop that uses it
            self._limiter = anyio.CapacityLimiter(self.settings.kds_concurrency)
        return self._limiter

    def _sources(self, extended: dict[str, bytes] | None, kds: KdsClient | None) -> CollateralSources:
        return CollateralSources(extended=extended, kds=kds, fetch_crl=self.settings.require_crl)

    @staticmethod
    def _key(report: AttestationReport) -> tuple[object, ...]:
        return (report.product_from_cpuid, bytes(report.chip_id), report.reported_tcb_raw, report.signing_key)

    def _remembered(self, key: tuple[object, ...]) -> str | None:
        with self._lock:
            entry = self._failures.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._failures[key]
                return None
            return entry[1]

    def _remember(self, key: tuple[object, ...], detail: str) -> None:
        if self.settings.kds_failure_ttl <= 0:
            return
        with self._lock:
            self._failures[key] = (time.monotonic() + self.settings.kds_failure_ttl, detail)
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_REMEMBERED:
                self._failures.popitem(last=False)

    async def resolve(self, report: AttestationReport, extended: dict[str, bytes] | None) -> Collateral:
        """The report's collateral, or ``Refused``; never blocks the loop on the network."""
        try:
            return resolve_collateral(report, self._sources(extended, self.local))
        except NotCached as exc:
            if self.online is None:
                raise Refused("collateral", f"cannot assemble the certificate chain: {exc}") from exc
        except SnpError as exc:
            raise Refused("collateral", f"cannot assemble the certificate chain: {exc}") from exc
        key = self._key(report)
        remembered = self._remembered(key)
        if remembered is not None:
            raise Refused("collateral", f"{remembered} (remembered; not asking KDS again yet)")
        limiter = self.limiter
        if limiter.available_tokens < 1:
            raise Refused("collateral.busy", "too many certificate fetches from AMD KDS in progress; retry")
        online = self.online
        assert online is not None
        try:
            return await anyio.to_thread.run_sync(
                lambda: resolve_collateral(report, self._sources(extended, online)), limiter=limiter)
        except SnpError as exc:
            detail = f"cannot assemble the certificate chain: {exc}"
            self._remember(key, detail)
            raise Refused("collateral", detail) from exc

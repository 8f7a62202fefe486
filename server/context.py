# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What every request handler needs, built once per process from the settings.

Only immutable things are kept in memory (engine, KEK, trust roots, the ingestion key
read from the database); everything that changes lives in the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from ..plugins.module_utils.snp.amd_certs import load_certificate
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.verify import TrustSettings
from . import state
from .collateral_fetch import CollateralFetcher
from .config import Settings
from .engine import make_engine, read_tx
from .keys import KeyStore
from .tables import head_revision
from .tls import TlsFiles, ca_fingerprint


@dataclass
class ServerContext:
    settings: Settings
    engine: Engine
    keys: KeyStore
    head: str
    simulated_roots: tuple[Any, ...]
    collateral: CollateralFetcher
    tls_ca_sha256: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # for front ends built on top (dashboard)

    def trust(self) -> TrustSettings:
        return TrustSettings(simulated_roots=self.simulated_roots, require_crl=self.settings.require_crl)

    def close(self) -> None:
        self.engine.dispose()


def load_simulated_roots(paths: list[str]) -> tuple[Any, ...]:
    roots = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                roots.append(load_certificate(handle.read(), field="simulated_root", path=path))
        except OSError as exc:
            raise SnpError(f"cannot read: {exc.strerror}", field="simulated_root", path=path) from exc
    return tuple(roots)


def build_context(settings: Settings, tls: TlsFiles | None = None) -> ServerContext:
    """Open the database (already initialised by ``state.initialize``) and load the keys."""
    engine = make_engine(settings.database_url, pool_size=max(settings.db_pool_size, settings.threads))
    store = KeyStore(settings.kek_path)
    with read_tx(engine) as conn:
        state.store_opens_ingestion(conn, settings)
    return ServerContext(
        settings=settings, engine=engine, keys=store, head=head_revision(),
        simulated_roots=load_simulated_roots(settings.simulated_roots), collateral=CollateralFetcher(settings),
        tls_ca_sha256=ca_fingerprint(tls) if tls else None,
    )

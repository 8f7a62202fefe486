# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Server settings: command line over ``<data-dir>/config.json`` over defaults.

Settings travel to uvicorn worker processes as JSON in one environment variable, so
every worker (and every replica) builds exactly the same app from the same values.
Nothing here is secret: the KEK stays in its file, passwords only as hashes in the DB.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..plugins.module_utils.snp.errors import SnpError

ENV_SETTINGS = "SNPGUARD_SERVER_SETTINGS"
CONFIG_NAME = "config.json"
DB_NAME = "snpguard.db"


@dataclass
class Settings:
    """Everything a server process needs; paths are absolute after ``resolve``."""

    data_dir: str
    db_url: str | None = None
    kek_file: str | None = None
    listen: str = "127.0.0.1:8443"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_names: list[str] = field(default_factory=list)
    tls_ips: list[str] = field(default_factory=list)
    insecure_http: bool = False
    simulated_roots: list[str] = field(default_factory=list)
    kds_cache: str | None = None
    offline: bool = False
    require_crl: bool = False
    # Worker processes: a count, or "auto" (see auto_workers); `server run` defaults to one.
    workers: int | str = 1
    nonce_ttl: int = 60
    rate_limit: int = 600  # requests per window and client address on /v1/attest/*; 0 disables
    rate_window: int = 60
    max_body: int = 1 << 20  # admin JSON bodies
    max_attest_body: int = 64 << 10
    max_image_body: int = 512 << 20  # registrations carry kernel and initrd
    forwarded_allow_ips: str | None = None
    log_level: str = "info"
    db_pool_size: int = 16
    threads: int = 16  # handler threads per worker process (anyio's default is 40)
    # Hostile clients (see transport.py): time and size budgets of one connection.
    header_timeout: float = 10.0  # seconds for the request head
    body_timeout: float = 30.0  # seconds for a body, plus its length at min_body_rate
    min_body_rate: int = 64 << 10  # bytes per second
    max_header_bytes: int = 32 << 10
    max_headers: int = 100
    max_connections_per_address: int = 64  # per worker process
    tls_handshake_timeout: float = 10.0
    # AMD KDS, when a report comes without its VCEK (see collateral_fetch.py).
    kds_timeout: float = 5.0  # seconds per fetch; never retried inside a request
    kds_concurrency: int = 4  # fetches in flight per worker; more are refused at once
    kds_failure_ttl: int = 300  # seconds a failed (chip, TCB) is refused without asking KDS again
    kds_url: str | None = None  # KDS base URL (default AMD's); tests point it at a local stub
    # Failed bearer-token attempts per client address and rate window before 429 (0 disables).
    auth_failure_limit: int = 20

    # -- derived ------------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite+pysqlite:///{os.path.join(self.data_dir, DB_NAME)}"

    @property
    def kek_path(self) -> str:
        return self.kek_file or os.path.join(self.data_dir, "kek.key")

    @property
    def tls_dir(self) -> str:
        return os.path.join(self.data_dir, "tls")

    @property
    def kds_cache_dir(self) -> str:
        return self.kds_cache or os.path.join(self.data_dir, "kds-cache")

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise SnpError(f"{self.listen!r} is not HOST:PORT", field="listen")
        return host.strip("[]") or "127.0.0.1", int(port)

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_env(cls) -> Settings:
        text = os.environ.get(ENV_SETTINGS)
        if not text:
            raise SnpError(f"{ENV_SETTINGS} is not set (start the server with 'snpguard server run')",
                           field="settings")
        return cls.from_json(text)

    def resolve(self) -> Settings:
        """Make paths absolute and check ranges; returns self."""
        self.data_dir = os.path.abspath(self.data_dir)
        for name in ("kek_file", "tls_cert", "tls_key", "kds_cache"):
            value = getattr(self, name)
            if value:
                setattr(self, name, os.path.abspath(value))
        self.simulated_roots = [os.path.abspath(p) for p in self.simulated_roots]
        self.host_port  # noqa: B018 - validates
        self.workers = _resolve_workers(self.workers, self.database_url)
        for name, low in (("nonce_ttl", 1), ("rate_window", 1), ("max_body", 1024),
                          ("max_attest_body", 1024), ("max_image_body", 1024), ("rate_limit", 0),
                          ("min_body_rate", 1), ("max_header_bytes", 1024), ("max_headers", 8),
                          ("max_connections_per_address", 1), ("kds_concurrency", 1), ("kds_failure_ttl", 0),
                          ("auth_failure_limit", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SnpError(f"must be an integer >= {low}, got {value!r}", field=name)
        for name in ("header_timeout", "body_timeout", "tls_handshake_timeout", "kds_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
                raise SnpError(f"must be a number of seconds in (0, 3600], got {value!r}", field=name)
        if self.kds_url is not None and not self.kds_url.startswith("https://"):
            raise SnpError(f"must be an https:// URL, got {self.kds_url!r}", field="kds_url")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SnpError("give both --tls-cert and --tls-key, or neither", field="tls_cert")
        return self


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and cpusets narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def auto_workers(database_url: str, cpus: int | None = None) -> int:
    """Worker processes for ``workers: auto``.

    One per core on SQLite, where a handshake is CPU work in the worker; twice that on
    PostgreSQL, where each handshake also waits for the database's round trips.  Measured
    on 2 cores at 300 handshakes/s (bench/server_bench.py): PostgreSQL with 2 workers
    missed p99 < 100 ms, with 4 it met it; SQLite met it with 2.
    """
    cpus = cpus or usable_cpus()
    per_core = 2 if database_url.startswith("postgresql") else 1
    return max(1, min(32, per_core * cpus))


def parse_workers(value: object) -> int | str:
    """A worker count as given (config.json or --workers): a positive integer or "auto"."""
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        raise SnpError(f"must be a positive integer or 'auto', got {value!r}", field="workers")
    if number < 1:
        raise SnpError(f"must be a positive integer or 'auto', got {number}", field="workers")
    return number


def _resolve_workers(value: object, database_url: str) -> int:
    parsed = parse_workers(value)
    return auto_workers(database_url) if parsed == "auto" else int(parsed)


def load_settings(data_dir: str, overrides: dict[str, Any]) -> Settings:
    """Defaults, then ``<data-dir>/config.json`` if present, then the non-None ``overrides``."""
    values: dict[str, Any] = {}
    path = os.path.join(data_dir, CONFIG_NAME)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
        except (OSError, ValueError) as exc:
            raise SnpError(f"cannot read the server configuration: {exc}", field="config", path=path) from exc
        if not isinstance(values, dict):
            raise SnpError("must be a JSON object", field="config", path=path)
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SnpError(f"unknown settings {', '.join(unknown)}", field="config", path=path)
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    values["data_dir"] = data_dir
    return Settings(**values).resolve()

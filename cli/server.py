# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard server run|init|reset-master-password|token``: the key-release server.

The web and database libraries are imported inside the handlers only, so the rest of
the CLI stays fast and works on hosts without the server's dependencies
(requirements-server.txt).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from ..plugins.module_utils.snp.errors import SnpError
from .common import examples


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="state: database, KEK, TLS, config.json")
    parser.add_argument("--db-url", metavar="URL", help="SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db "
                        "(default: SQLite in the data dir)")
    parser.add_argument("--kek-file", metavar="FILE", help="the key-encryption key (default DIR/kek.key); "
                        "replicas share it")


def register(subparsers: Any) -> None:
    server = subparsers.add_parser(
        "server", help="run and administer the key-release server",
        description="Run the key-release server and administer its state (data dir, database, KEK, TLS). "
                    "Needs the server's dependencies (requirements-server.txt or the wheel's 'server' extra).",
        epilog=examples("snpguard server init --data-dir /var/lib/snpguard --password-file /root/master.txt",
                        "snpguard server run --data-dir /var/lib/snpguard --listen 0.0.0.0:8443"))
    actions = server.add_subparsers(dest="server_action", metavar="ACTION", required=True,
                                    help="run, init, reset-master-password, rotate-kek, rotate-ingestion-key, "
                                         "backup, restore or token")

    run = actions.add_parser(
        "run", help="start the server (initialises state on first start)",
        description="Serve the REST API under /v1 and the dashboard over TLS (a private CA is made on first "
                    "start; its SHA-256 is printed). The first start creates the state and prints the master "
                    "password once. Settings in DIR/config.json apply; options given here win.",
        epilog=examples("snpguard server run --data-dir /var/lib/snpguard --listen 0.0.0.0:8443 --workers auto",
                        "snpguard server run --data-dir ./lab-server --simulated-root ./lab/simulated-amdsp/ark.pem "
                        "--offline"))
    _common(run)
    run.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8443")
    run.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM); default: generated")
    run.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    run.add_argument("--tls-names", type=_csv, metavar="A,B", help="DNS names of the generated certificate")
    run.add_argument("--tls-ips", type=_csv, metavar="IP,IP", help="IP addresses of the generated certificate")
    run.add_argument("--insecure-http", action="store_true", default=None, help="plain HTTP (tests behind a proxy)")
    run.add_argument("--simulated-root", dest="simulated_roots", action="append", metavar="ARK.pem",
                     help="ALSO trust this SIMULATED AMD-SP root (test labs only; 'snpguard sim init' makes one)")
    run.add_argument("--kds-cache", metavar="DIR", help="AMD KDS certificate cache (default DIR/kds-cache)")
    run.add_argument("--offline", action="store_true", default=None, help="never contact AMD KDS")
    run.add_argument("--require-crl", action="store_true", default=None, help="fetch and require AMD's CRL")
    run.add_argument("--workers", type=_workers, metavar="N|auto",
                     help="worker processes (default 1; auto: one per usable core on SQLite, two on PostgreSQL)")
    run.add_argument("--threads", type=int, metavar="N", help="request-handler threads per worker (default 16)")
    run.add_argument("--nonce-ttl", type=int, metavar="SECONDS", help="challenge lifetime (default 60)")
    run.add_argument("--rate-limit", type=int, metavar="N",
                     help="attestation requests per window and client address (default 600; 0 disables)")
    run.add_argument("--rate-window", type=int, metavar="SECONDS", help="rate-limit window (default 60)")
    run.add_argument("--max-body", type=int, metavar="BYTES", help="admin request bodies (default 1 MiB)")
    run.add_argument("--max-image-body", type=int, metavar="BYTES", help="registrations (default 512 MiB)")
    run.add_argument("--header-timeout", type=float, metavar="SECONDS",
                     help="a client must send its request head within this time (default 10)")
    run.add_argument("--body-timeout", type=float, metavar="SECONDS",
                     help="a body must arrive within this time plus its length at --min-body-rate (default 30)")
    run.add_argument("--min-body-rate", type=int, metavar="BYTES_PER_S", help="default 65536")
    run.add_argument("--max-header-bytes", type=int, metavar="BYTES", help="request head size (default 32768)")
    run.add_argument("--max-connections-per-address", type=int, metavar="N",
                     help="open connections per client address and worker (default 64)")
    run.add_argument("--tls-handshake-timeout", type=float, metavar="SECONDS", help="default 10")
    run.add_argument("--kds-url", metavar="URL", help="AMD KDS base URL (default https://kdsintf.amd.com)")
    run.add_argument("--kds-timeout", type=float, metavar="SECONDS",
                     help="one KDS fetch, never retried within a request (default 5)")
    run.add_argument("--kds-failure-ttl", type=int, metavar="SECONDS",
                     help="how long a failed VCEK fetch for one chip and TCB is not retried (default 300)")
    run.add_argument("--auth-failure-limit", type=int, metavar="N",
                     help="failed API-token attempts per address and rate window before 429 (default 20; 0 disables)")
    run.add_argument("--forwarded-allow-ips", metavar="IPS", help="trust X-Forwarded-For from these proxies")
    run.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                     help="server log level (default info)")
    run.add_argument("--no-access-log", action="store_true", help="do not log every request")
    run.set_defaults(handler=_run)

    init = actions.add_parser(
        "init", help="create the state, print the master password once, exit",
        description="Create the data dir (0700), database, key-encryption key, ingestion key and TLS CA and "
                    "certificate, print the master password once (or write it to --password-file) and the CA's "
                    "SHA-256, and exit. Run again, it changes nothing and keeps the master password.",
        epilog=examples("snpguard server init --data-dir /var/lib/snpguard --password-file /root/master.txt \\",
                        "--tls-names keys.example.com --save-config"))
    _common(init)
    init.add_argument("--password-file", metavar="FILE",
                      help="write the new master password to this new 0600 file instead of printing it")
    init.add_argument("--tls-names", type=_csv, metavar="A,B", help="DNS names of the generated certificate")
    init.add_argument("--tls-ips", type=_csv, metavar="IP,IP", help="IP addresses of the generated certificate")
    init.add_argument("--save-config", action="store_true",
                      help="record --db-url/--kek-file/--tls-* in DIR/config.json for later 'run'")
    init.set_defaults(handler=_init)

    reset = actions.add_parser(
        "reset-master-password", help="generate a new master password and print it once",
        description="Replace the master password (only its hash is stored) and end every dashboard session.",
        epilog=examples("snpguard server reset-master-password --data-dir /var/lib/snpguard "
                        "--password-file /root/master.txt"))
    _common(reset)
    reset.add_argument("--password-file", metavar="FILE", help="write it to this new 0600 file instead")
    reset.set_defaults(handler=_reset)

    rotate_kek = actions.add_parser(
        "rotate-kek", help="re-wrap every stored key under a new key-encryption key (one transaction)",
        description="Writes a new KEK beside the old one, re-wraps every volume key, ID key and ingestion key in "
                    "one transaction, then replaces the KEK file. Servers on this host pick the new file up "
                    "by themselves; replicas on other hosts need the new file copied to them (they refuse to "
                    "register until then).",
        epilog=examples("snpguard server rotate-kek --data-dir /var/lib/snpguard"))
    _common(rotate_kek)
    rotate_kek.set_defaults(handler=_rotate_kek)

    rotate_ing = actions.add_parser(
        "rotate-ingestion-key", help="make a new ingestion key current; the old one is accepted for --grace",
        description="Conversion seals volume keys to the ingestion key published at /v1/public/info. After "
                    "rotation the new key is published and registrations sealed to the old one are still "
                    "accepted for the grace period.",
        epilog=examples("snpguard server rotate-ingestion-key --data-dir /var/lib/snpguard --grace 7d"))
    _common(rotate_ing)
    rotate_ing.add_argument("--grace", type=_duration, default=7 * 86400, metavar="DURATION",
                            help="how long the old key still opens registrations: seconds, or Nm/Nh/Nd (default 7d)")
    rotate_ing.set_defaults(handler=_rotate_ingestion)

    backup = actions.add_parser(
        "backup", help="write the keys and the database to one 0600 file (as secret as the data dir)",
        description="A consistent snapshot of the database (SQLite or PostgreSQL), the KEK, the TLS files and "
                    "config.json, as a tar.gz written 0600. It holds the KEK: keep it as safe as the data dir.",
        epilog=examples("snpguard server backup --data-dir /var/lib/snpguard --out /root/snpguard.backup"))
    _common(backup)
    backup.add_argument("--out", required=True, metavar="FILE", help="the backup file to write (replaced atomically)")
    backup.set_defaults(handler=_backup)

    restore = actions.add_parser(
        "restore", help="restore a backup into an empty data dir and database",
        description="Restore a 'server backup' file into an empty data dir and an empty database (SQLite in the "
                    "data dir, or --db-url for PostgreSQL).",
        epilog=examples("snpguard server restore /root/snpguard.backup --data-dir /var/lib/snpguard",
                        "snpguard server restore /root/snpguard.backup --data-dir /var/lib/snpguard \\",
                        "--db-url postgresql+psycopg://snpguard:secret@db/snpguard"))
    _common(restore)
    restore.add_argument("backup_file", metavar="FILE", help="a file written by 'snpguard server backup'")
    restore.set_defaults(handler=_restore)

    token = actions.add_parser(
        "token", help="mint an API token directly in the database (bootstrap)",
        description="Mint an API token on the server's host, without the API (the first admin token of an "
                    "automated deployment). The token is printed once on stdout.",
        epilog=examples("snpguard server token --data-dir /var/lib/snpguard --name first-admin --scope admin"))
    _common(token)
    token.add_argument("--name", required=True, help="a name for people (shown by 'token list')")
    token.add_argument("--expires-at", metavar="ISO8601", help="expiry (default: never)")
    token.add_argument("--scope", choices=["operator", "admin"], default="operator",
                       help="operator: images and audit (default); admin: also mints and revokes tokens")
    token.set_defaults(handler=_token)


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:], 0)
    number = value[:-1] if scale else value
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 3600, 30m, 12h, 7d)")
    return int(number) * (scale or 1)


def _rotate_kek(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.engine import short_engine
    from ..server.keys import rotate_kek
    from ..server.state import secure_data_dir

    secure_data_dir(settings)
    with short_engine(settings.database_url) as engine:
        count = rotate_kek(engine, settings.kek_path)
    print(f"snpguard server: {count} stored keys re-wrapped under a new KEK; {settings.kek_path} replaced "
          "(copy it to every replica on another host)")
    return 0


def _rotate_ingestion(args: argparse.Namespace) -> int:
    settings = _settings(args)
    import base64

    from ..server.engine import short_engine
    from ..server.kek import load_or_create_kek
    from ..server.keys import rotate_ingestion_key

    with short_engine(settings.database_url) as engine:
        new, old, until = rotate_ingestion_key(engine, load_or_create_kek(settings.kek_path, create=False),
                                               args.grace)
    ends = datetime.fromtimestamp(until / 1000, UTC).isoformat().replace("+00:00", "Z")
    print(f"snpguard server: ingestion key {base64.b64encode(new).decode()} is current; "
          f"{base64.b64encode(old).decode()} is accepted until {ends}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.backup import backup

    manifest = backup(settings, args.out)
    rows = ", ".join(f"{n} {c}" for n, c in sorted(manifest["rows"].items()))
    print(f"snpguard server: backup written to {args.out} (0600; schema {manifest['revision']}; {rows}). "
          "It holds the KEK: keep it as safe as the data dir.")
    return 0


def _restore(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.backup import restore

    manifest = restore(settings, args.backup_file)
    print(f"snpguard server: restored {args.backup_file} (schema {manifest['revision']}, "
          f"{sum(manifest['rows'].values())} rows) into {settings.data_dir}")
    return 0


def _workers(text: str) -> int | str:
    from ..server.config import parse_workers  # standard library only, unlike the rest of the server

    try:
        return parse_workers(text)
    except SnpError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    try:
        from ..server.config import load_settings
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise SnpError(f"the server needs its dependencies (pip install -r requirements-server.txt): {exc}",
                       field="server") from exc
    keys = ("db_url", "kek_file", "listen", "tls_cert", "tls_key", "tls_names", "tls_ips", "insecure_http",
            "simulated_roots", "kds_cache", "offline", "require_crl", "workers", "threads", "nonce_ttl", "rate_limit",
            "rate_window", "max_body", "max_image_body", "forwarded_allow_ips", "log_level", "header_timeout",
            "body_timeout", "min_body_rate", "max_header_bytes", "max_connections_per_address",
            "tls_handshake_timeout", "kds_url", "kds_timeout", "kds_failure_ttl", "auth_failure_limit")
    overrides = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    overrides.update(extra)
    return load_settings(args.data_dir, overrides)


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.run import serve

    return serve(settings, access_log=not args.no_access_log)


def _init(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.run import announce_password, prepare_tls
    from ..server.state import initialize, write_config
    from ..server.tls import ca_fingerprint

    result = initialize(settings)
    tls = prepare_tls(settings)
    if args.save_config:
        values = {k: v for k, v in (("db_url", args.db_url), ("kek_file", settings.kek_file if args.kek_file else None),
                                    ("tls_names", args.tls_names), ("tls_ips", args.tls_ips)) if v}
        print(f"snpguard server: configuration saved to {write_config(settings, values)}")
    announce_password(result, sys.stdout, args.password_file)
    if result.master_password is None:
        print("snpguard server: already initialised (master password unchanged)")
    if tls is not None:
        print(f"snpguard server: TLS CA {tls.ca or tls.cert} sha256 {ca_fingerprint(tls)}")
    return 0


def _reset(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.run import announce_password
    from ..server.state import InitResult, reset_master_password

    password = reset_master_password(settings)
    announce_password(InitResult(password, "", b""), sys.stdout, args.password_file)
    return 0


def _token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from ..server.state import create_token_offline

    expires = None
    if args.expires_at:
        try:
            when = datetime.fromisoformat(args.expires_at)
        except ValueError as exc:
            raise SnpError(f"{args.expires_at!r} is not ISO 8601", field="expires_at") from exc
        expires = int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    token_id, token = create_token_offline(settings, args.name, expires, args.scope)
    print(token)
    print(f"snpguard server: token {token_id} ({args.name}) created; it is shown only this once", file=sys.stderr)
    return 0

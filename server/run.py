# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Starting the server: initialise state, prepare TLS, hand over to uvicorn.

With ``--workers N`` uvicorn spawns N processes; each rebuilds the app from the
settings passed in the environment (no state is shared in memory, so this is the
same as N replicas on one host).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from ..plugins.module_utils.common.fileio import create_private
from .config import ENV_SETTINGS, Settings
from .state import InitResult, initialize
from .tls import TlsFiles, ca_fingerprint, ensure_tls
from .transport import HTTP_PROTOCOL, LOOP_FACTORY

BANNER = "=" * 72


def prepare_tls(settings: Settings) -> TlsFiles | None:
    if settings.insecure_http:
        return None
    if settings.tls_cert and settings.tls_key:
        return TlsFiles(cert=settings.tls_cert, key=settings.tls_key, ca=None)
    return ensure_tls(settings.tls_dir, settings.tls_names, settings.tls_ips)


def announce_password(result: InitResult, out: TextIO, password_file: str | None = None) -> None:
    """Print a newly generated master password once (or write it to a new 0600 file)."""
    if not result.master_password:
        return
    if password_file:
        create_private(password_file, (result.master_password + "\n").encode())
        print(f"snpguard server: master password written to {password_file} (0600); it is not stored anywhere else",
              file=out, flush=True)
        return
    print(f"{BANNER}\nsnpguard server: the master password (shown ONCE, stored only as a hash):\n\n"
          f"    {result.master_password}\n\nReset it with 'snpguard server reset-master-password'.\n{BANNER}",
          file=out, flush=True)


def serve(settings: Settings, *, out: TextIO | None = None, access_log: bool = True) -> int:
    import uvicorn

    out = out or sys.stdout
    result = initialize(settings)
    announce_password(result, out)
    tls = prepare_tls(settings)
    host, port = settings.host_port
    scheme = "http" if tls is None else "https"
    fingerprint = ca_fingerprint(tls) if tls else None
    print(f"snpguard server: {scheme}://{host}:{port}/v1 (schema {result.revision}"
          + (f", TLS CA sha256 {fingerprint}" if fingerprint else ", PLAIN HTTP") + ")", file=out, flush=True)
    options = {
        "host": host, "port": port, "log_level": settings.log_level, "access_log": access_log,
        "proxy_headers": settings.forwarded_allow_ips is not None,
        "forwarded_allow_ips": settings.forwarded_allow_ips, "timeout_keep_alive": 30,
        "server_header": False,
        # Bounded connections (header size and count, head/body/TLS-handshake deadlines, per-address cap).
        "http": HTTP_PROTOCOL, "loop": LOOP_FACTORY,
    }
    if tls is not None:
        options.update(ssl_certfile=tls.cert, ssl_keyfile=tls.key)
    os.environ[ENV_SETTINGS] = settings.to_json()
    if tls is not None:
        os.environ.update(SNPGUARD_TLS_CERT=tls.cert, SNPGUARD_TLS_KEY=tls.key, SNPGUARD_TLS_CA=tls.ca or "")
    if settings.workers > 1:
        uvicorn.run("ansible_collections.snpguard.cvm.server.app:app_from_env", factory=True,
                    workers=settings.workers, **options)
    else:
        from .app import create_app

        uvicorn.run(create_app(settings, tls=tls), **options)
    return 0

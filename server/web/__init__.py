# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Slot for the web dashboard (built separately on top of the REST API's services).

``install(app, ctx)`` is called once by ``create_app``; the dashboard adds its router
(pages outside /v1), templates under ``server/web/templates`` (Jinja2) and static
files here.  Reuse, don't re-implement: ``server.auth`` (master password, session
cookies, CSRF), ``server.images`` and ``server.attestation`` (the same services the
API calls), ``server.db`` (tables, ``read_tx``/``write_tx``).  Until then: nothing.
"""

from __future__ import annotations

from typing import Any


def install(app: Any, ctx: Any) -> None:
    """Mount the dashboard on ``app`` (no-op until the dashboard exists)."""
    return None

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""HTTPS requests with the standard library only: no redirects, the caller's TLS context.

Ansible modules, the CLI and the guest agent all talk to servers; the CLI and the agent
must work where Ansible is not installed (a wheel without extras, an initrd), so none
of them uses ``ansible.module_utils.urls``.  Redirects are never followed (a 3xx is an
``HTTPError`` like any other status), so a request and its credentials go only where
the caller sent them.  Proxies come from the environment, as with urllib.
"""

from __future__ import annotations

import ssl
import urllib.request
from typing import Any

DEFAULT_USER_AGENT = "snpguard.cvm"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def verifying_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS with certificate and host name checks, against ``ca_file`` (a pinned CA) or the system roots."""
    context = ssl.create_default_context(cafile=ca_file)
    if ca_file:
        # The pinned certificate is the trust anchor even when it is an intermediate.
        context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    return context


def open_url(method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 30.0, context: ssl.SSLContext | None = None,
             user_agent: str = DEFAULT_USER_AGENT) -> Any:
    """Open ``url``; returns the response (a context manager) or raises ``urllib.error.HTTPError``/``URLError``."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an HTTP(S) URL: {url!r}")
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context or verifying_context()),
                                         _NoRedirect())
    request = urllib.request.Request(url, data=data, method=method, headers={"User-Agent": user_agent,
                                                                             **(headers or {})})
    return opener.open(request, timeout=timeout)

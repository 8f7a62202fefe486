# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A client of the key-release server's REST API (``/v1``), for the CLI and the modules.

Standard library plus ``ansible.module_utils.urls`` only, so it runs wherever a module
runs.  TLS is verified against a pinned CA file (the server's private CA, pinned at
``snpguard config login`` by trust on first use, see ``fetch_server_ca``) or the
system's roots; never silently unverified.  Every error is an ``ApiError`` (an
``SnpError``) that names the field or the attestation check the server named.

Registration never needs a plaintext volume key here: callers pass a key already
sealed to the server's ingestion key, or ``seal_volume_key_file`` seals a key file in
memory (the plaintext lives in a wiped ``bytearray`` for that one call).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
from typing import Any

from ..common.http import open_url, verifying_context
from ..snp.errors import SnpError
from . import registration
from .protocol import MAX_VOLUME_KEY, TOKEN_RE, seal_for_ingestion, wipe

API_PREFIX = "/v1"
USER_AGENT = "snpguard.cvm-client/1"
MAX_RESPONSE = 1 << 30  # bundles carry a kernel and an initrd
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEX_RE = re.compile(r"^(0x)?[0-9a-fA-F]*$")

__all__ = [
    "ApiError",
    "KeyReleaseClient",
    "ca_fingerprint_pem",
    "content_digest",
    "fetch_server_ca",
    "image_facts",
    "normalize_url",
    "seal_volume_key_file",
    "token_id",
]


class ApiError(SnpError):
    """The server refused a request, or could not be reached; ``status`` is None when unreachable."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 field: str | None = None, check: str | None = None, path: str | None = None) -> None:
        super().__init__(message, field=field, path=path)
        self.status = status
        self.code = code
        self.check = check

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().as_dict())
        for key in ("status", "code", "check"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def normalize_url(url: str) -> str:
    """``https://host:port`` or ``…/v1`` → the API base ``https://host:port/v1`` (no trailing slash)."""
    if not isinstance(url, str) or not url.strip():
        raise SnpError("the server URL is empty", field="url")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise SnpError(f"{url!r} is not an http(s)://HOST[:PORT] URL", field="url")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise SnpError("the server URL takes no user, query or fragment", field="url")
    path = parsed.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path + API_PREFIX, "", ""))


def ca_fingerprint_pem(pem: bytes | str) -> str:
    """SHA-256 (hex) of the last certificate in a PEM bundle: what the server publishes as ``tls_ca_sha256``."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if not blocks:
        raise SnpError("no PEM certificate found", field="ca_file")
    try:
        der = ssl.PEM_cert_to_DER_cert(blocks[-1])
    except ValueError as exc:
        raise SnpError(f"not a PEM certificate: {exc}", field="ca_file") from exc
    return hashlib.sha256(der).hexdigest()


def fetch_server_ca(url: str, timeout: float = 15.0) -> tuple[str, str, int]:
    """Trust on first use: the top certificate of the chain the server presents, unverified.

    Returns ``(CA PEM, its SHA-256 hex, chain length)``.  The caller shows the
    fingerprint to a person (or compares it with one they were given) before pinning.
    The server sends its certificate followed by its CA; a self-signed certificate
    alone is pinned as itself.
    """
    parsed = urllib.parse.urlsplit(normalize_url(url))
    if parsed.scheme != "https":
        raise SnpError("trust on first use needs an https:// URL", field="url")
    host, port = parsed.hostname or "", parsed.port or 443
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is trusted yet: we only read what the server presents
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            chain = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise ApiError(f"cannot fetch the TLS certificate of {host}:{port}: {exc}", field="url") from exc
    if not chain:
        raise ApiError(f"{host}:{port} presented no certificate", field="url")
    pem = ssl.DER_cert_to_PEM_cert(chain[-1])
    return pem, hashlib.sha256(chain[-1]).hexdigest(), len(chain)


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER certificates as sent by the peer (Python 3.13 has it public; 3.10-3.12 on the C object)."""
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        inner = getattr(tls, "_sslobj", None)
        getter = getattr(inner, "get_unverified_chain", None)
    if getter is not None:
        out = []
        for cert in getter() or []:
            # 3.13 returns DER bytes; the private 3.10-3.12 method returns objects whose default encoding is PEM.
            out.append(cert if isinstance(cert, bytes) else ssl.PEM_cert_to_DER_cert(cert.public_bytes()))
        return out
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def token_id(token: str) -> str | None:
    """The id part of ``sgt_<id>_<secret>`` (None when the text is not a token)."""
    match = TOKEN_RE.match(token.strip()) if isinstance(token, str) else None
    return match.group(1) if match else None


def seal_volume_key_file(path: str, ingestion_public_key_b64: str, image_name: str) -> str:
    """Seal a raw volume key file to the server's ingestion key; the plaintext is wiped after use."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_VOLUME_KEY:
                raise SnpError(f"a volume key file is at most {MAX_VOLUME_KEY} bytes, this one is {size}",
                               field="volume_key_file", path=path)
            key = bytearray(size)
            try:
                got = handle.readinto(key)
                if got != size:
                    raise SnpError("the file changed while it was read", field="volume_key_file", path=path)
                public = base64.b64decode(ingestion_public_key_b64, validate=True)
                sealed = seal_for_ingestion(key, public, image_name)
            finally:
                wipe(key)
    except OSError as exc:
        raise SnpError(f"cannot read the volume key: {exc.strerror}", field="volume_key_file", path=path) from exc
    except binascii.Error as exc:
        raise SnpError("the server's ingestion key is not base64", field="ingestion_public_key") from exc
    return base64.b64encode(sealed).decode()


def read_sealed_key_file(path: str) -> str:
    """A sealed volume key file (raw bytes, or their base64) as base64 text."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(64 << 10)
    except OSError as exc:
        raise SnpError(f"cannot read the sealed key: {exc.strerror}", field="sealed_volume_key_file",
                       path=path) from exc
    text = data.strip()
    try:
        if text and re.fullmatch(rb"[A-Za-z0-9+/\s]+={0,2}", text):
            base64.b64decode(b"".join(text.split()), validate=True)
            return b"".join(text.split()).decode()
    except binascii.Error:
        pass
    return base64.b64encode(data).decode()


def content_digest(body: dict[str, Any], artifact_digests: dict[str, str] | None) -> str:
    """The server's ``content_sha256`` for a registration body (``registration.canonical_spec``)."""
    return registration.content_digest(registration.canonical_spec(body, artifact_digests))


artifact_digests = registration.artifact_digests
_hex = registration.hex_value
_hexes = registration.hex_values


def image_facts(image: dict[str, Any] | None) -> dict[str, Any]:
    """The public facts of an image (server answer or request body) in one comparable shape."""
    if not image:
        return {}
    measurements = image.get("measurements") or {}
    if isinstance(measurements, list):
        measurements = {str(m["vcpus"]): m["measurement"] for m in measurements}
    policy = {"allow_debug": False}
    policy.update({k: v for k, v in (image.get("policy") or {}).items() if v is not None})
    min_tcb = image.get("min_tcb")
    out = {
        "name": image.get("name"),
        "measurements": {str(int(k)): _hex(v) for k, v in sorted(measurements.items(), key=lambda i: int(i[0]))},
        "vcpu_type": image.get("vcpu_type"),
        "policy": policy,
        "min_tcb": {k: v for k, v in min_tcb.items() if v is not None} if min_tcb else None,
        "id_key_digests": _hexes(image.get("id_key_digests")),
        "author_key_digests": _hexes(image.get("author_key_digests")),
        "family_id": _hex(image.get("family_id")),
        "image_id": _hex(image.get("image_id")),
        "guest_svn": image.get("guest_svn"),
        "host_data": _hex(image.get("host_data")),
    }
    if "enabled" in image:
        out["enabled"] = bool(image["enabled"])
    if image.get("content_sha256"):
        out["content_sha256"] = image["content_sha256"]
    return out


class KeyReleaseClient:
    """One server: base URL, API token, and how its TLS certificate is verified.

    ``ca_file`` pins the trust anchors to that file (the server's private CA); without it
    the system's roots are used.  ``validate_certs=False`` turns verification off (tests
    behind a proxy only).  Methods return the decoded JSON of the answer.
    """

    def __init__(self, url: str, token: str | None = None, *, ca_file: str | None = None,
                 validate_certs: bool = True, timeout: float = 60.0) -> None:
        self.base = normalize_url(url)
        if token is not None and not isinstance(token, str):
            raise SnpError("the API token must be a string", field="token")
        self.token = token.strip() if token else None
        self.ca_file = ca_file
        self.validate_certs = validate_certs
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if ca_file and not os.path.isfile(ca_file):
            raise SnpError("the pinned CA file does not exist", field="ca_file", path=ca_file)

    # -- transport --------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            if not self.validate_certs:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                try:
                    context = verifying_context(self.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise SnpError(f"cannot load the pinned CA: {exc}", field="ca_file", path=self.ca_file) from exc
            self._context = context
        return self._context

    def request(self, method: str, path: str, body: Any = None, *, auth: str = "token",
                password: str | None = None, raw: bool = False) -> tuple[int, Any, dict[str, str]]:
        """Send one request; returns (status, decoded JSON or bytes, headers) or raises ``ApiError``."""
        headers = {"Accept": "application/json" if not raw else "application/gzip, application/json"}
        if auth == "token":
            if not self.token:
                raise SnpError("this needs an API token (snpguard config login, or the token option)", field="token")
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth == "password":
            if not password:
                raise SnpError("this needs the master password", field="master_password")
            creds = base64.b64encode(f"admin:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {creds}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self.base + path
        try:
            with open_url(method, url, data=data, headers=headers, timeout=self.timeout,
                          context=self._ssl_context(), user_agent=USER_AGENT) as response:
                payload = response.read(MAX_RESPONSE + 1)
                status = response.status
                answer_headers = {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            raise self._http_error(method, path, exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from exc
        except (OSError, ssl.SSLError) as exc:
            raise self._unreachable(exc) from exc
        if len(payload) > MAX_RESPONSE:
            raise ApiError(f"the answer to {method} {path} is larger than {MAX_RESPONSE} bytes", status=status)
        if raw:
            return status, payload, answer_headers
        try:
            return status, json.loads(payload) if payload else None, answer_headers
        except ValueError as exc:
            raise ApiError(f"{method} {path}: the server did not answer JSON (is {self.base} a snpguard server?)",
                           status=status, field="url") from exc

    def _unreachable(self, reason: Any) -> ApiError:
        if isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(reason):
            anchor = f"the pinned CA {self.ca_file}" if self.ca_file else "the system's trusted CAs"
            return ApiError(f"TLS verification of {self.base} against {anchor} failed: "
                            f"{getattr(reason, 'verify_message', None) or reason}", field="ca_file", path=self.ca_file)
        return ApiError(f"cannot reach {self.base}: {reason}", field="url")

    @staticmethod
    def _http_error(method: str, path: str, exc: urllib.error.HTTPError) -> ApiError:
        try:
            text = exc.read(1 << 16)
        except Exception:  # a broken body must not hide the status
            text = b""
        error: dict[str, Any] = {}
        try:
            decoded = json.loads(text) if text else {}
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
                error = decoded["error"]
        except ValueError:
            pass
        code = error.get("code") or f"http_{exc.code}"
        message = error.get("message") or (exc.reason if isinstance(exc.reason, str) else "") or "error"
        check = error.get("check")
        field = error.get("field") or (f"check {check}" if check else None)
        detail = f"{method} {path}: {exc.code} {code}: {message}"
        if check:
            detail += f" (check {check})"
        if exc.code == 429 and exc.headers.get("Retry-After"):
            detail += f"; retry after {exc.headers.get('Retry-After')} s"
        return ApiError(detail, status=exc.code, code=code, field=field, check=check)

    def _get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)[1]

    # -- public ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._get("/health", auth="none")

    def ready(self) -> dict[str, Any]:
        return self._get("/ready", auth="none")

    def public_info(self) -> dict[str, Any]:
        return self._get("/public/info", auth="none")

    def openapi(self) -> dict[str, Any]:
        return self._get("/openapi.json", auth="none")

    # -- images ------------------------------------------------------------------------------------

    def list_images(self) -> list[dict[str, Any]]:
        return list(self._get("/images")["items"])

    def get_image(self, image_id: str) -> dict[str, Any]:
        return self._get(f"/images/{self.image_uuid(image_id)}")

    def find_image(self, name: str) -> dict[str, Any] | None:
        """The image with this name, or None."""
        return next((image for image in self.list_images() if image["name"] == name), None)

    def resolve_image(self, ref: str) -> dict[str, Any]:
        """An image by id (UUID) or by name."""
        if UUID_RE.match(ref.strip().lower()):
            try:
                return self.get_image(ref)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        found = self.find_image(ref)
        if found is None:
            raise ApiError(f"no image named {ref!r}", status=404, code="not_found", field="image")
        return found

    @staticmethod
    def image_uuid(image_id: str) -> str:
        value = str(image_id).strip().lower()
        if not UUID_RE.match(value):
            raise SnpError(f"{image_id!r} is not an image id (UUID)", field="id")
        return value

    def register_image(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /v1/images: (201, image) created, (200, image) unchanged or replaced; ``ApiError`` 409 on conflict."""
        if "volume_key" in body:
            raise SnpError("never send a plaintext volume key: seal it to the ingestion key", field="volume_key")
        status, out, _headers = self.request("POST", "/images", body)
        return status, out

    def set_image_enabled(self, image_id: str, enabled: bool) -> dict[str, Any]:
        action = "enable" if enabled else "disable"
        return self.request("POST", f"/images/{self.image_uuid(image_id)}/{action}")[1]

    def delete_image(self, image_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/images/{self.image_uuid(image_id)}")[1]

    def bundle(self, image_id: str) -> tuple[bytes, str]:
        """The launch bundle (tar.gz) and its SHA-256, checked against the server's ``X-Content-SHA256``."""
        _status, data, headers = self.request("GET", f"/images/{self.image_uuid(image_id)}/bundle", raw=True)
        digest = hashlib.sha256(data).hexdigest()
        announced = headers.get("x-content-sha256")
        if announced and announced.lower() != digest:
            raise ApiError("the bundle does not match the SHA-256 the server announced", field="bundle")
        return data, digest

    def audit(self, limit: int = 100, offset: int = 0, image: str | None = None) -> list[dict[str, Any]]:
        query = {"limit": limit, "offset": offset}
        if image:
            query["image"] = image
        return list(self._get("/audit?" + urllib.parse.urlencode(query))["items"])

    # -- sealing -----------------------------------------------------------------------------------

    def ingestion_public_key(self) -> str:
        return str(self.public_info()["ingestion_public_key"])

    def seal_key(self, volume_key: bytes | bytearray, image_name: str) -> str:
        """Seal an in-memory key (the caller wipes it) to this server's ingestion key; base64."""
        public = base64.b64decode(self.ingestion_public_key(), validate=True)
        return base64.b64encode(seal_for_ingestion(volume_key, public, image_name)).decode()

    def seal_key_file(self, path: str, image_name: str) -> str:
        return seal_volume_key_file(path, self.ingestion_public_key(), image_name)

    # -- tokens ------------------------------------------------------------------------------------

    def create_token(self, name: str, expires_at: str | None = None, *,
                     master_password: str | None = None, scope: str | None = None) -> dict[str, Any]:
        """POST /v1/tokens with an admin API token, or with the master password (a fresh server's first token)."""
        body: dict[str, Any] = {"name": name}
        if expires_at:
            body["expires_at"] = expires_at
        if scope:
            body["scope"] = scope
        auth = "password" if master_password else "token"
        return self.request("POST", "/tokens", body, auth=auth, password=master_password)[1]

    def list_tokens(self) -> list[dict[str, Any]]:
        return list(self._get("/tokens")["items"])

    def revoke_token(self, token_ref: str) -> dict[str, Any]:
        ident = token_id(token_ref) or str(token_ref).strip().lower()
        if not re.fullmatch(r"[0-9a-f]{16}", ident):
            raise SnpError(f"{token_ref!r} is not a token id (16 hex digits)", field="id")
        return self.request("DELETE", f"/tokens/{ident}")[1]

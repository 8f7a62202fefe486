# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The guest agent's configuration: /etc/snpguard/agent.json in the measured initrd.

The file is part of the initrd, so its hash is in the kernel-hashes table and therefore
in MEASUREMENT: whoever changes the server URL or the pinned CA changes the measurement
and the server refuses the key.  The one override is ``snpguard.url=`` on the kernel
command line, which is measured too.

Schema (version 1), every key checked, unknown keys refused::

    {"version": 1,
     "url": "https://keys.example:8443",        # the key-release server (https only)
     "ca_file": "/etc/snpguard/ca.pem",         # pinned CA of the server's TLS certificate
     "image": "debian-13-web",                  # the registered image name (for the console)
     "luks_device": "UUID=0b0f…",               # UUID=…, LABEL=… (LUKS2 header) or /dev/…
     "mapper_name": "root",                     # /dev/mapper/<name> the root is opened as
     "report_source": "auto",                   # auto | configfs | sev-guest | channel
     "retries": 8, "backoff_initial": 1.0, "backoff_max": 30.0, "timeout": 15.0,
     "allow_discards": false}

Standard library only (it is read in the initrd).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..snp.errors import SnpError

SCHEMA_VERSION = 1
CONFIG_PATH = "/etc/snpguard/agent.json"
CA_PATH = "/etc/snpguard/ca.pem"
REPORT_SOURCES = ("auto", "configfs", "sev-guest", "channel")
URL_PARAMETER = "snpguard.url"
MAX_CONFIG = 1 << 16
_MAPPER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,126}$")
_UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")
_URL_RE = re.compile(r"^https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[A-Za-z0-9._~/%-]*)?$")


@dataclass(frozen=True)
class AgentConfig:
    url: str
    image: str
    luks_device: str
    mapper_name: str = "root"
    ca_file: str | None = CA_PATH
    report_source: str = "auto"
    retries: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    timeout: float = 15.0
    allow_discards: bool = False

    def validate(self) -> AgentConfig:
        check_url(self.url, "url")
        if not isinstance(self.image, str) or not _IMAGE_RE.match(self.image):
            raise SnpError("must be an image name (letters, digits, '._:+-', at most 128)", field="image")
        check_device(self.luks_device, "luks_device")
        if not isinstance(self.mapper_name, str) or not _MAPPER_RE.match(self.mapper_name):
            raise SnpError("must be a device-mapper name (letters, digits, '_.+-')", field="mapper_name")
        if self.ca_file is not None and (not isinstance(self.ca_file, str) or not self.ca_file.startswith("/")):
            raise SnpError("must be an absolute path or null (the system roots)", field="ca_file")
        if self.report_source not in REPORT_SOURCES:
            raise SnpError(f"must be one of {', '.join(REPORT_SOURCES)}, got {self.report_source!r}",
                           field="report_source")
        _number(self.retries, "retries", int, 1, 1000)
        _number(self.backoff_initial, "backoff_initial", float, 0.0, 3600.0)
        _number(self.backoff_max, "backoff_max", float, 0.0, 3600.0)
        if self.backoff_max < self.backoff_initial:
            raise SnpError("must not be below backoff_initial", field="backoff_max")
        _number(self.timeout, "timeout", float, 0.1, 600.0)
        if not isinstance(self.allow_discards, bool):
            raise SnpError("must be true or false", field="allow_discards")
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** min(attempt - 1, 32)))


def check_url(url: Any, field: str) -> str:
    if not isinstance(url, str) or not url.startswith("https://"):
        raise SnpError("must be an https:// URL (the key travels only over TLS to a pinned server)", field=field)
    if not _URL_RE.match(url):
        raise SnpError(f"is not a plain https://host[:port][/path] URL: {url!r}", field=field)
    port = url.split("//", 1)[1].split("/", 1)[0].rsplit("]", 1)[-1]
    if ":" in port and not 1 <= int(port.rsplit(":", 1)[1]) <= 65535:
        raise SnpError("has a port outside 1..65535", field=field)
    return url


def check_device(device: Any, field: str) -> str:
    if not isinstance(device, str) or not device:
        raise SnpError("must be UUID=…, LABEL=… or an absolute /dev path", field=field)
    kind, sep, value = device.partition("=")
    if sep and kind == "UUID":
        if not _UUID_RE.match(value):
            raise SnpError(f"{value!r} is not a UUID", field=field)
    elif sep and kind == "LABEL":
        if not value or len(value.encode()) > 47 or any(c in value for c in "\x00\n"):
            raise SnpError("a LUKS2 label is 1..47 bytes", field=field)
    elif not (device.startswith("/dev/") and ".." not in device.split("/") and "\n" not in device):
        raise SnpError(f"must be UUID=…, LABEL=… or an absolute /dev path, got {device!r}", field=field)
    return device


def _number(value: Any, field: str, kind: type, low: float, high: float) -> None:
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise SnpError(f"must be {'an integer' if kind is int else 'a number'}, got {type(value).__name__}",
                       field=field)
    if not low <= value <= high:
        raise SnpError(f"must be {low:g}..{high:g}, got {value}", field=field)


_FIELDS = {"url": str, "image": str, "luks_device": str, "mapper_name": str, "ca_file": (str, type(None)),
           "report_source": str, "retries": int, "backoff_initial": (int, float), "backoff_max": (int, float),
           "timeout": (int, float), "allow_discards": bool}
_REQUIRED = ("url", "image", "luks_device")


def parse_config(text: str | bytes, where: str = CONFIG_PATH) -> AgentConfig:
    """A validated ``AgentConfig`` from the JSON text; ``SnpError`` naming the field otherwise."""
    if len(text) > MAX_CONFIG:
        raise SnpError(f"is larger than {MAX_CONFIG} bytes", field="agent.json", path=where)
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnpError(f"is not valid JSON: {exc}", field="agent.json", path=where) from None
    if not isinstance(doc, dict):
        raise SnpError("must be a JSON object", field="agent.json", path=where)
    if doc.get("version") != SCHEMA_VERSION:
        raise SnpError(f"must be {SCHEMA_VERSION}, got {doc.get('version')!r}", field="version", path=where)
    unknown = sorted(set(doc) - set(_FIELDS) - {"version"})
    if unknown:
        raise SnpError(f"unknown key(s): {', '.join(unknown)}", field=unknown[0], path=where)
    for name in _REQUIRED:
        if name not in doc:
            raise SnpError("is missing", field=name, path=where)
    values: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        if name not in doc:
            continue
        value = doc[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise SnpError(f"has the wrong type {type(value).__name__}", field=name, path=where)
        values[name] = float(value) if kind == (int, float) else value
    try:
        return AgentConfig(**values).validate()
    except SnpError as exc:
        raise SnpError(exc.message, field=exc.field, path=where) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_config(path: str = CONFIG_PATH) -> AgentConfig:
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_CONFIG + 1)
    except OSError as exc:
        raise SnpError(f"cannot read: {exc.strerror}", field="agent.json", path=path) from None
    return parse_config(text, path)


def render_config(config: AgentConfig) -> bytes:
    """The agent.json text of ``config`` (validated first; sorted keys, so the same config gives the same bytes)."""
    config.validate()
    return (json.dumps({"version": SCHEMA_VERSION, **asdict(config)}, indent=2, sort_keys=True) + "\n").encode()


# -- the kernel command line -------------------------------------------------------------------------


def parse_cmdline(text: str) -> list[tuple[str, str | None]]:
    """``/proc/cmdline`` as the kernel splits it: (name, value or None), double quotes honoured.

    As the kernel's ``next_arg``: spaces outside double quotes separate parameters, a quote
    opening the parameter or its value is removed with its closing partner; arguments after
    ``--`` belong to init and are not returned.
    """
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start, quoted, equals = i, False, -1
        while i < n and (quoted or not text[i].isspace()):
            if text[i] == '"':
                quoted = not quoted
            elif text[i] == "=" and equals < 0:
                equals = i
            i += 1
        token = text[start:i]
        if token == "--":
            break
        if equals < 0:
            out.append((_unquote(token), None))
        else:
            name, value = text[start:equals], text[equals + 1:i]
            if name.startswith('"'):
                name = name[1:]
                value = value[:-1] if value.endswith('"') else value
            else:
                value = _unquote(value)
            out.append((name, value))
    return out


def _unquote(value: str) -> str:
    if value.startswith('"'):
        value = value[1:]
        if value.endswith('"'):
            value = value[:-1]
    return value


def cmdline_value(text: str, name: str) -> str | None:
    """The last ``name=value`` on the command line (the kernel's and initramfs-tools' rule), or None."""
    found = None
    for key, value in parse_cmdline(text):
        if key == name:
            found = value if value is not None else ""
    return found


def apply_cmdline(config: AgentConfig, cmdline: str) -> AgentConfig:
    """``snpguard.url=`` from the (measured) command line overrides the file's URL."""
    from dataclasses import replace

    url = cmdline_value(cmdline, URL_PARAMETER)
    if url is None:
        return config
    check_url(url, URL_PARAMETER)
    return replace(config, url=url)

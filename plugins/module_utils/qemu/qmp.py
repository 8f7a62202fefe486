# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A small QMP client (QEMU Machine Protocol over a Unix socket): enough to ask and to stop a guest.

QMP speaks JSON objects, one per line: a greeting, then ``qmp_capabilities``, then
commands, each answered by ``{"return": …}`` or ``{"error": …}``; asynchronous events
(``{"event": …}``) may come in between and are skipped.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from ..snp.errors import SnpError


class QmpError(SnpError):
    """QMP refused a command, or nothing answers on the socket."""


class Qmp:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> Qmp:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise QmpError(f"no QMP server: {exc.strerror or exc}", field="qmp", path=self.path) from exc
        self._sock = sock
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError("the socket does not speak QMP", field="qmp", path=self.path)
        self.command("qmp_capabilities")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise QmpError("not connected (use 'with Qmp(path) as qmp')", field="qmp", path=self.path)
        return self._sock

    def _read(self) -> dict[str, Any]:
        sock = self._connected()
        while b"\n" not in self._buffer:
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                raise QmpError(f"QMP connection failed: {exc}", field="qmp", path=self.path) from exc
            if not chunk:
                raise QmpError("QEMU closed the QMP connection", field="qmp", path=self.path)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return dict(json.loads(line))
        except ValueError as exc:
            raise QmpError(f"QEMU sent something that is not JSON: {line[:80]!r}", field="qmp") from exc

    def command(self, name: str, **arguments: Any) -> Any:
        sock = self._connected()
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            answer = self._read()
            if "event" in answer:
                continue
            if "error" in answer:
                error = answer["error"]
                raise QmpError(f"QMP {name}: {error.get('class')}: {error.get('desc')}", field="qmp")
            return answer.get("return")

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The one exception family that every layer raises and every front end maps.

Each error names the input it is about (``field``) and, for files, the ``path``,
so the module, the CLI and the server can all say *which* thing is wrong and why.
"""

from __future__ import annotations


class SnpError(Exception):
    """Bad input or a failed check; ``field`` and ``path`` say where."""

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.path = path

    def __str__(self) -> str:
        where = []
        if self.field:
            where.append(self.field)
        if self.path:
            where.append(self.path)
        return f"{': '.join(where)}: {self.message}" if where else self.message

    def as_dict(self) -> dict[str, str]:
        """Extra keys for ``fail_json`` and for JSON error bodies."""
        out = {"msg": str(self)}
        if self.field:
            out["field"] = self.field
        if self.path:
            out["path"] = self.path
        return out


class FormatError(SnpError):
    """A binary structure (firmware, block, report) is not what it claims to be."""


class MeasurementError(SnpError):
    """The launch configuration cannot be measured as given."""

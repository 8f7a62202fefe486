# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The key-release server (guide: docs/docsite/rst/key_release_server.rst): REST API, attestation, sealed volume keys.

Lives outside ``plugins/`` because its web and database imports would fail Ansible's
sanity import test there; it imports the protocol and the verifier from
``plugins/module_utils`` and copies nothing.  Entry points: ``create_app`` (in
``app``) for ASGI, ``snpguard server run|init|reset-master-password`` for people.
"""

from __future__ import annotations

API_VERSION = "v1"
SERVER_VERSION = "0.1.0"

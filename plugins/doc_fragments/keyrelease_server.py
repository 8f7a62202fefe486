# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment:
    # How modules reach the key-release server (cvm_register, cvm_api_token).
    DOCUMENTATION = r"""
options:
  url:
    description:
      - URL of the key-release server, for example C(https://keys.example.com:8443) (C(/v1) may be included).
      - If not set, the environment variable E(SNPGUARD_URL) is used.
    type: str
    required: true
  token:
    description:
      - API token (C(sgt_...)), sent in the C(Authorization) header as a bearer token.
      - If not set, the environment variable E(SNPGUARD_TOKEN) is used.
    type: str
  ca_file:
    description:
      - PEM file of the CA that must have issued the server's certificate; only this CA is trusted (pinning).
      - This is the server's private CA, C(tls/ca.pem) in its data directory, printed with its SHA-256 by
        C(snpguard server init) and pinned by C(snpguard config login).
      - If not set, the environment variable E(SNPGUARD_CA_FILE) is used, else the system's trusted CAs.
    type: path
  validate_certs:
    description:
      - Verify the server's TLS certificate. Set to V(false) only in throw-away test setups.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for each answer of the server.
    type: int
    default: 60
notes:
  - The module talks to the server from the host it runs on; normally that is the controller
    (C(delegate_to=localhost)).
"""

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment:
    # What the verified report must show (shared by snp_report_verify and the attest action).
    EXPECTATIONS = r"""
options:
  measurements:
    description: Accepted launch measurements (96 hex digits each); the report's MEASUREMENT must be one of them.
    type: list
    elements: str
  host_data:
    description: Expected HOST_DATA (64 hex digits).
    type: str
  report_data:
    description: Expected REPORT_DATA (128 hex digits).
    type: str
  id_key_digests:
    description: Accepted ID key digests (SHA-384 of the SEV public-key structure, 96 hex digits).
    type: list
    elements: str
  author_key_digests:
    description: Accepted author key digests; the report must also have AUTHOR_KEY_EN set.
    type: list
    elements: str
  family_id:
    description: Expected FAMILY_ID (32 hex digits).
    type: str
  image_id:
    description: Expected IMAGE_ID (32 hex digits).
    type: str
  min_guest_svn:
    description: Minimum GUEST_SVN.
    type: int
  vmpl:
    description: The VMPL the report must have been requested at.
    type: int
  allow_debug:
    description: Accept a guest policy that allows debugging (the host can then read guest memory).
    type: bool
    default: false
  policy:
    description:
      - 'Required guest-policy flags, for example C({smt: false, single_socket: true}).'
      - Keys are C(smt), C(migrate_ma), C(single_socket), C(cxl_allow), C(mem_aes_256_xts), C(rapl_dis),
        C(ciphertext_hiding), C(page_swap_disable).
    type: dict
  min_abi:
    description: Minimum firmware ABI the policy demands, as C(MAJOR.MINOR).
    type: str
  platform_info:
    description:
      - 'Required platform flags, for example C({smt_enabled: false, tsme_enabled: true}).'
      - Keys are C(smt_enabled), C(tsme_enabled), C(ecc_enabled), C(rapl_disabled), C(ciphertext_hiding_enabled),
        C(alias_check_complete), C(tio_enabled).
    type: dict
  min_tcb:
    description:
      - Minimum TCB per component (C(bootloader), C(tee), C(snp), C(microcode), C(fmc) on Turin), checked against
        the reported, committed, launch and current TCB.
    type: dict
  allow_provisional_firmware:
    description: Accept firmware whose committed TCB and version are behind the current ones.
    type: bool
    default: false
  chip_ids:
    description: Allow-list of CHIP_IDs (128 hex digits each).
    type: list
    elements: str
  min_report_version:
    description: Minimum report version.
    type: int
  launch_mit_vector:
    description: Bits that must be set in LAUNCH_MIT_VECTOR (version 5 reports).
    type: int
  current_mit_vector:
    description: Bits that must be set in CURRENT_MIT_VECTOR (version 5 reports).
    type: int
  signing_keys:
    description: Accepted signing key types.
    type: list
    elements: str
    choices: [VCEK, VLEK]
    default: [VCEK, VLEK]
"""

    # Where certificates come from and what is trusted.
    TRUST = r"""
options:
  vek:
    description:
      - The VCEK or VLEK certificate (PEM or DER).
      - Otherwise taken from the extended report, O(certs_dir), O(cache_dir) or KDS.
    type: path
  ask:
    description: The ASK (or ASVK for a VLEK) certificate.
    type: path
  ark:
    description: The ARK certificate. It must be AMD's pinned ARK for the product, or equal O(simulated_root).
    type: path
  crl:
    description: The CRL from KDS (signed by the ARK).
    type: path
  certs_dir:
    description:
      - A directory holding C(vcek.der)/C(vlek.der), C(ask.pem)/C(asvk.pem), C(ark.pem), C(cert_chain.pem), C(crl.der).
    type: path
  cache_dir:
    description: KDS cache directory, keyed like KDS URLs.
    type: path
  offline:
    description: Never contact KDS; use only given files, O(certs_dir) and O(cache_dir).
    type: bool
    default: false
  fetch_crl:
    description: Also fetch the CRL from KDS (or the cache) when none is given.
    type: bool
    default: false
  require_crl:
    description: Refuse the report when no CRL is available.
    type: bool
    default: false
  product:
    description: The expected product. Needed to find certificates for version 2 reports without a VCEK.
    type: str
    choices: [Milan, Genoa, Turin]
  simulated_root:
    description:
      - Certificate of a SIMULATED AMD-SP root to trust in addition to AMD's pinned roots. For test environments
        without SEV-SNP hardware only; never set it in production.
      - The C(ark.pem) of a directory made by C(snpguard sim init DIR).
    type: path
  verification_time:
    description: Verify as of this ISO 8601 time instead of now (for archived reports).
    type: str
"""

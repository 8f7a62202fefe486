# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Launching SEV-SNP guests: the QEMU command line, libvirt XML, QMP, and the simulated launch."""

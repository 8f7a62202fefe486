# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Image surgery: turning a stock cloud image into a confidential one (LUKS2 or dm-verity root, staging dir)."""

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``python -m ansible_collections.snpguard.cvm.cli``."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())

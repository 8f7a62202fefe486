# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Simulated AMD-SP chains as module-scoped fixtures, for the tests that provoke checks with them.

``milan = chain_fixture(Product.MILAN)`` in a test module gives it a fixture ``milan``:
one simulated chip and chain (RSA-2048, for speed), made once per module.
"""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product


def chain_fixture(product: Product) -> Any:
    """A module-scoped fixture named after ``product`` (``milan``, ``genoa``, ``turin``)."""

    def chain() -> SimulatedAmdSp:
        return SimulatedAmdSp.create(product, rsa_bits=2048)

    return pytest.fixture(chain, scope="module", name=product.value.lower())

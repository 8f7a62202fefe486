# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The guest agent in the initrd: early-boot network, key release (keyrelease/agent_client.py), unlocking root."""

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ``snpguard`` command line, for people who do not use Ansible.

Every subcommand is a thin front end over ``plugins/module_utils``.
"""

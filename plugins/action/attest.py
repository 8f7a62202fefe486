# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Action ``snpguard.cvm.attest``: attest a running CVM over the normal Ansible connection.

The controller picks a fresh nonce, the guest asks its AMD-SP for a report bound to
it (``snp_guest_report``), and the controller verifies that report against AMD's roots
and the expected values.  The play fails on any mismatch, before any secret is sent.
"""

from __future__ import annotations

import secrets
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.kds_fetch import https_get
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.snp_report_verify import (
    EXPECTATION_ARGSPEC,
    TRUST_ARGSPEC,
    verify_from_options,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import NONCE_SIZE, report_data_binding
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

ARGSPEC: dict[str, dict[str, Any]] = {
    **{name: spec for name, spec in EXPECTATION_ARGSPEC.items() if name != "report_data"},
    **TRUST_ARGSPEC,
    "bind_public_key": {"type": "str"},
    "guest_vmpl": {"type": "int", "default": 0},
    "report_dest": {"type": "path"},
    "guest_simulated_amdsp": {"type": "path"},
    "guest_simulated_channel": {"type": "str"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    @staticmethod
    def _report_source(args: dict[str, Any]) -> dict[str, str]:
        """Only the source the user named: the module refuses two, even when one is null."""
        names = {"simulated_amdsp": "guest_simulated_amdsp", "simulated_channel": "guest_simulated_channel"}
        return {option: args[arg] for option, arg in names.items() if args.get(arg) is not None}

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGSPEC)[1]
        try:
            public_key = bytes.fromhex(args["bind_public_key"]) if args.get("bind_public_key") else b""
        except ValueError as exc:
            raise AnsibleActionFail("bind_public_key: is not hex", result={"field": "bind_public_key"}) from exc
        nonce = secrets.token_bytes(NONCE_SIZE)
        report_data = report_data_binding(nonce, public_key)
        guest = self._execute_module(
            module_name="snpguard.cvm.snp_guest_report",
            module_args=dict({"report_data": report_data.hex(), "vmpl": args["guest_vmpl"], "certificates": True},
                             **self._report_source(args)),
            task_vars=task_vars,
        )
        if guest.get("failed"):
            raise AnsibleActionFail(f"the guest could not produce a report: {guest.get('msg')}", result=guest)
        args.pop("guest_simulated_amdsp", None)
        args.pop("guest_simulated_channel", None)
        options = dict(args, report_b64=guest["report_b64"], certs_b64=guest.get("certs_b64"),
                       report_data=report_data.hex())
        try:
            attestation = verify_from_options(options, fetch=https_get, raise_on_failure=False)
        except SnpError as exc:
            raise AnsibleActionFail(str(exc), result=exc.as_dict()) from exc
        result.update(attestation.as_dict())
        result.update(changed=False, nonce=nonce.hex(), report_data=report_data.hex(), source=guest.get("source"))
        failures = [check for check in attestation.results if check.failed]
        if failures:
            result.update(failed=True, check=failures[0].name,
                          msg=f"attestation refused: check {failures[0].name} failed: {failures[0].message()}")
        if args.get("report_dest") and not self._task.check_mode:
            import base64

            from ansible_collections.snpguard.cvm.plugins.module_utils.common.fileio import atomic_write

            try:
                atomic_write(args["report_dest"], base64.b64decode(guest["report_b64"]))
            except SnpError as exc:
                raise AnsibleActionFail(f"report_dest: {exc.message}",
                                        result=dict(result, field="report_dest", path=exc.path)) from None
        return result

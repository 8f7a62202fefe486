# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Integrity-only images: registered without a volume key, refused by name at key release.

A ``mode: verity`` image is registered for its measurements, bundle and expectations (what
attest.yml checks at run time); there is no key.  A report of its launch asking for a key is
refused with ``image.integrity_only`` (audited, session consumed); re-registering it unchanged
changes nothing; turning a keyed image of the same name into a keyless one (or back) is another
content and needs ``replace``; the database migration allows the NULL key (revision 0003).
"""

from __future__ import annotations

import os

from servers import Agent, ServerProcess, register

MEASUREMENT = bytes([0x5A]) * 48


def test_a_keyless_image_registers_and_its_reports_are_refused_by_name(server: ServerProcess, admin, sim) -> None:
    body = {"name": "verity-only", "measurements": {"1": MEASUREMENT.hex()}}
    made = admin.post("/images", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["integrity_only"] is True
    again = admin.post("/images", json=body)
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["replaced"] is False
    with server.client() as client:
        response, key, verify = Agent(sim).handshake(client, MEASUREMENT)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["check"] == "image.integrity_only", response.text
        assert key is None
        replay = client.post("/attest/verify", json=verify)
        assert replay.json()["error"]["check"] == "session.replayed"  # the refusal consumed the session
    audit = admin.get("/audit", params={"image": "verity-only"}).json()["items"]
    assert [e["check"] for e in audit if e["result"] == "refused"] == ["session.replayed", "image.integrity_only"]


def test_keyed_and_keyless_of_one_name_are_different_content(server: ServerProcess, admin) -> None:
    measurement = bytes([0x5B]) * 48
    keyed = register(admin, "was-keyed", {"1": measurement.hex()}, os.urandom(32))
    assert keyed.status_code == 201, keyed.text
    keyless = admin.post("/images", json={"name": "was-keyed", "measurements": {"1": measurement.hex()}})
    assert keyless.status_code == 409 and keyless.json()["error"]["field"] == "name", keyless.text
    replaced = admin.post("/images", json={"name": "was-keyed", "measurements": {"1": measurement.hex()},
                                           "replace": True})
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True and replaced.json()["integrity_only"]

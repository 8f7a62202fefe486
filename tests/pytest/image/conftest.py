# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the image tests: stock Debian 13 cloud images built by scripts/cloud_image.py.

``cloud_image`` (initramfs-tools) and ``cloud_image_dracut`` are session-scoped
:class:`CloudImage` values: the cached qcow2 (never modify it: boot or convert a copy or a
copy-on-write overlay) and its manifest (schema in the script's docstring).  The first run
builds them (~2.5 min each, needs root); later runs reuse the cache until the recipe
changes.  When an image cannot be built the tests using it skip, or fail under CI=true.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cloud_image.py"


def load_script() -> ModuleType:
    """scripts/cloud_image.py as a module (it is not part of the collection)."""
    if "cloud_image" in sys.modules:
        return sys.modules["cloud_image"]
    spec = importlib.util.spec_from_file_location("cloud_image", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cloud_image"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CloudImage:
    """A built stock image: ``path`` (image.qcow2, read-only by convention) and its ``manifest``."""

    path: Path
    manifest: dict

    @property
    def variant(self) -> str:
        return self.manifest["variant"]


def _need_image(variant: str) -> CloudImage:
    script = load_script()
    try:
        path = script.build(variant)
    except (script.CloudImageError, OSError) as exc:
        message = f"cannot build the {variant} cloud image: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must be able to build it)")
        pytest.skip(message)
    manifest = script.load_manifest(path.parent)
    if manifest is None:
        pytest.fail(f"{path.parent} has no valid manifest right after the build")
    return CloudImage(path, manifest)


@pytest.fixture(scope="session")
def cloud_image() -> CloudImage:
    return _need_image("initramfs-tools")


@pytest.fixture(scope="session")
def cloud_image_dracut() -> CloudImage:
    return _need_image("dracut")


# -- the pipeline: two key-release replicas on PostgreSQL, the playbooks, two conversions ------------------


@dataclass
class Replicas:
    """Two ``snpguard server run`` on one PostgreSQL database: one KEK, one TLS CA (naming 10.0.2.100 too)."""

    a: Any
    b: Any
    token: str

    @property
    def ca_file(self) -> Path:
        return self.a.data_dir / "tls" / "ca.pem"


@pytest.fixture(scope="session")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_url_session: str, sim_root: Path) -> Iterator[Replicas]:
    import shutil

    from servers import GUEST_SERVER, ServerProcess

    work = tmp_path_factory.mktemp("replicas")
    common = ["--db-url", pg_url_session, "--kek-file", str(work / "shared" / "kek.key"), "--simulated-root",
              str(sim_root), "--offline", "--tls-ips", f"127.0.0.1,{GUEST_SERVER[0]}"]
    a = ServerProcess(work / "a", common).start()
    shutil.copytree(work / "a" / "tls", work / "b" / "tls")
    (work / "b").chmod(0o700)
    b = ServerProcess(work / "b", common).start()
    try:
        yield Replicas(a, b, a.mint_token("pipeline-admin"))
    finally:
        b.stop()
        a.stop()


@pytest.fixture(scope="session")
def pg_url_session(postgres: Any) -> Iterator[str]:
    """A database of its own on the session's cluster for the pipeline's replicas."""
    from sqlalchemy import create_engine, text

    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "pipeline"'))
    try:
        yield postgres.url.rsplit("/", 1)[0] + "/pipeline"
    finally:
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE IF EXISTS "pipeline" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, replicas: Replicas, sim_dir: Path, artifacts: Path,
             cloud_image: CloudImage) -> Any:
    """The playbooks against the replicas: convert.yml (a luks and a verity image, on two builders at once)
    and register.yml, run once for the session; later tests boot and attest VMs of these images."""
    from conversions import need_tools
    from pipeline import LUKS, VERITY, Pipeline

    need_tools()
    work = tmp_path_factory.mktemp("pipeline")
    token_file = work / "controller" / "api-token"
    token_file.parent.mkdir(parents=True)
    with replicas.a.client(replicas.token) as admin:
        response = admin.post("/tokens", json={"name": "pipeline", "scope": "operator"})
    assert response.status_code == 201, response.text
    token_file.write_text(response.json()["token"] + "\n")
    token_file.chmod(0o600)
    images = [{"name": LUKS, "source": str(cloud_image.path), "mode": "luks", "builder": "builder-a"},
              {"name": VERITY, "source": str(cloud_image.path), "mode": "verity", "builder": "builder-b"}]
    flow = Pipeline(work, replicas.a.base, replicas.ca_file, token_file, sim_dir, artifacts / "OVMF.amdsev.fd",
                    images)
    flow.write_inventory()
    flow.converted = flow.must("convert.yml", "--forks", "2", stage="convert_both")
    flow.registered = flow.must("register.yml", stage="register")
    return flow


@pytest.fixture
def convert_params(tmp_path: Path, artifacts: Path) -> dict[str, Any]:
    """Conversion options (luks, the volume key sealed to a fixed public key) writing into ``tmp_path``;
    the test adds ``source``."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return {"output": str(tmp_path / "cvm.qcow2"), "staging_dir": str(tmp_path / "staging"),
            "name": "debian-13-cvm", "firmware": str(artifacts / "OVMF.amdsev.fd"),
            "server_url": "https://10.0.2.100", "server_ca_file": str(ca),
            "ingestion_public_key": base64.b64encode(bytes(range(32))).decode()}

# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Everything the agent needs in an image's root file system, as a list of files to write.

``agent_files(config, ca_pem, crypto_source)`` → ``[PayloadFile(dest, data, mode), …]``:

* ``/usr/lib/snpguard/agent/ansible_collections/snpguard/cvm/…``: the agent's Python closure
  (the modules it imports at top level, found by reading their imports, and the
  ``__init__.py`` of every package on the way), and ``snpguard-agent.py`` that runs it;
* ``/usr/lib/snpguard/agent/cryptography/…``: ``cryptography`` (abi3, so one build serves
  Python 3.11 to 3.13+) from ``crypto_source``, a site-packages directory or a ``.whl``;
  its Rust core imports ``_cffi_backend``, which is per Python version: the hook takes it
  from the image's python3-cffi-backend (the converter installs that package);
* ``/etc/snpguard/agent.json`` and ``/etc/snpguard/ca.pem``;
* the initramfs-tools hook, local-top and panic scripts, and the dracut module (setup script,
  unit and the script it runs).

Nothing here writes: the caller (the converter, through libguestfs) does.
"""

from __future__ import annotations

import ast
import os
import zipfile
from dataclasses import dataclass

from ..snp.errors import SnpError
from . import boot_report as _report_entry  # noqa: F401  (see collection_source)
from . import dracut, initramfs_tools
from . import main as _agent_entry  # noqa: F401  (see collection_source)
from .config import CA_PATH, CONFIG_PATH, AgentConfig, render_config

AGENT_DIR = "/usr/lib/snpguard/agent"
PACKAGE = "ansible_collections.snpguard.cvm"
ENTRY = "plugins/module_utils/agent/main.py"
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

#: The stdlib modules the agent imports (Python 3.13, found by running it with a real HTTPS
#: request, HPKE, ctypes and the config/network parsers, and listing ``sys.modules``; the hook
#: imports the agent in the initrd's own layout, so mkinitramfs fails when this list misses one,
#: and tests/pytest/agent/test_agent_boot.py boots it).  Modules built into
#: the interpreter (posix, _io, _socket, zlib, …) need no file.
STDLIB_MODULES = (
    "__future__", "_collections_abc", "_colorize", "_compression", "_opcode_metadata", "_weakrefset", "abc",
    "argparse", "ast", "base64", "bisect", "bz2", "codecs", "collections", "collections.abc", "contextlib", "copy",
    "copyreg", "ctypes", "ctypes._endian", "dataclasses", "datetime", "dis", "email", "email._encoded_words",
    "email._parseaddr", "email._policybase", "email.base64mime", "email.charset", "email.encoders", "email.errors",
    "email.feedparser", "email.header", "email.iterators", "email.message", "email.parser", "email.quoprimime",
    "email.utils", "encodings", "encodings.aliases", "encodings.ascii", "encodings.idna", "encodings.latin_1",
    "encodings.utf_8", "enum", "fnmatch", "functools", "genericpath", "gettext", "glob", "hashlib", "hmac", "http",
    "http.client", "importlib", "importlib._abc", "importlib._bootstrap", "importlib._bootstrap_external",
    "importlib.machinery", "inspect", "io", "ipaddress", "json", "json.decoder", "json.encoder", "json.scanner",
    "keyword", "linecache", "locale", "lzma", "opcode", "operator", "os", "posixpath", "quopri", "random", "re",
    "re._casefix", "re._compiler", "re._constants", "re._parser", "reprlib", "selectors", "shutil", "socket", "ssl",
    "stat", "string", "stringprep", "struct", "tempfile", "textwrap", "threading", "token", "tokenize", "traceback",
    "types", "typing", "urllib", "urllib.error", "urllib.parse", "urllib.request", "urllib.response", "uuid",
    "warnings", "weakref", "zipimport"
)
#: C extensions under lib-dynload (the hooks copy the libraries ldd names for them).
STDLIB_EXTENSIONS = ("_bz2", "_ctypes", "_hashlib", "_lzma", "_ssl", "_uuid")
#: What the hook imports to prove the initrd's layout is complete.
IMPORT_CHECK = ("ansible_collections.snpguard.cvm.plugins.module_utils.agent.main, ssl, urllib.request, ctypes, "
                "fcntl, uuid, encodings.idna, base64, binascii, cryptography.x509")

ENTRY_SCRIPT = f'''#!/usr/bin/python3 -I -S -B
"""snpguard-agent: attest and unlock the root (written by snpguard.cvm; do not edit)."""
import sys

sys.path[:0] = ["{AGENT_DIR}"]
from {PACKAGE}.plugins.module_utils.agent.main import main  # noqa: E402

sys.exit(main())
'''


def collection_source(rel: str) -> bytes | None:
    """A file of this collection's tree (``plugins/...``), or None when it has none by that name.

    Read from disk, or - when the collection runs as an Ansible module, packed in AnsiballZ's
    zip - through the zip's loader.  AnsiballZ packs the module_utils a module imports; the
    imports of the agent's and the boot report's entry modules above put their whole closure in.
    """
    path = os.path.join(COLLECTION_ROOT, rel)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        get_data = getattr(globals().get("__loader__"), "get_data", None)
        if get_data is None:
            return None
        try:
            return bytes(get_data(path))
        except OSError:
            return None


@dataclass(frozen=True)
class PayloadFile:
    dest: str  # absolute path inside the image
    data: bytes
    mode: int = 0o644


def agent_modules(root: str = COLLECTION_ROOT, entry: str = ENTRY) -> list[str]:
    """The collection files (relative paths) the agent imports at module level, ``__init__.py`` included."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        path = os.path.join(root, rel)
        source = collection_source(rel) if root == COLLECTION_ROOT else _read_plain(path)
        if source is None:
            raise SnpError(f"cannot read the agent's module {rel}", field="agent", path=path)
        try:
            tree = ast.parse(source.decode("utf-8"), filename=path)
        except (SyntaxError, UnicodeDecodeError) as exc:
            raise SnpError(f"cannot parse the agent's module {rel}: {exc}", field="agent", path=path) from exc
        for target in _relative_imports(tree, rel, root):
            if target not in seen:
                todo.append(target)
    # Every package on the way gets an (empty, see read_collection_file) __init__.py, whether the
    # tree has one or not: AnsiballZ adds plugins/__init__.py, a checkout has none, and the
    # payload - so a conversion's digest - must not depend on how the collection was loaded.
    files = set(seen)
    for rel in seen:
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            files.add("/".join(parts[:depth]) + "/__init__.py")
    return sorted(files)


def _read_plain(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _exists(root: str, rel: str) -> bool:
    if root == COLLECTION_ROOT:
        return collection_source(rel) is not None
    return os.path.isfile(os.path.join(root, rel))


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import: the module body and try/if blocks in it (not functions)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
        elif isinstance(node, ast.If):
            out += _top_level(node.body) + _top_level(node.orelse)
    return out


def _relative_imports(tree: ast.Module, rel: str, root: str) -> list[str]:
    package = rel.split("/")[:-1]
    found: list[str] = []
    for node in _top_level(tree.body):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package[:len(package) - (node.level - 1)] if node.level > 1 else list(package)
        module = base + (node.module.split(".") if node.module else [])
        candidates = ["/".join(module) + ".py", "/".join(module) + "/__init__.py"]
        if not node.module:  # from . import x
            candidates = ["/".join([*module, alias.name]) + ".py" for alias in node.names]
        for candidate in candidates:
            if _exists(root, candidate):
                found.append(candidate)
                if node.module:
                    break
    return found


def crypto_files(crypto_source: str) -> list[tuple[str, bytes, int]]:
    """(path under the agent dir, bytes, mode) of ``cryptography`` from a site-packages dir or a wheel."""
    def wanted(name: str) -> bool:
        return (name.startswith("cryptography/") and "/__pycache__/" not in name
                and not name.endswith((".pyi", "/py.typed", "/")))

    out: list[tuple[str, bytes, int]] = []
    if os.path.isdir(crypto_source):
        top = os.path.join(crypto_source, "cryptography")
        if not os.path.isfile(os.path.join(top, "__init__.py")):
            raise SnpError("has no cryptography package", field="crypto_source", path=crypto_source)
        for directory, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, crypto_source).replace(os.sep, "/")
                if wanted(rel):
                    with open(path, "rb") as handle:
                        out.append((rel, handle.read(), 0o755 if name.endswith(".so") else 0o644))
    elif crypto_source.endswith(".whl") and os.path.isfile(crypto_source):
        try:
            with zipfile.ZipFile(crypto_source) as wheel:
                for info in sorted(wheel.infolist(), key=lambda i: i.filename):
                    if wanted(info.filename):
                        out.append((info.filename, wheel.read(info),
                                    0o755 if info.filename.endswith(".so") else 0o644))
        except (OSError, zipfile.BadZipFile) as exc:
            raise SnpError(f"is not a readable wheel: {exc}", field="crypto_source", path=crypto_source) from exc
    else:
        raise SnpError("must be a site-packages directory or a cryptography .whl", field="crypto_source",
                       path=crypto_source)
    names = {rel for rel, _data, _mode in out}
    if "cryptography/hazmat/primitives/hpke.py" not in names:
        raise SnpError("is a cryptography without HPKE (version 47 or later is needed)", field="crypto_source",
                       path=crypto_source)
    if not any(rel.startswith("cryptography/hazmat/bindings/_rust") and rel.endswith(".so") for rel in names):
        raise SnpError("has no compiled cryptography core (_rust*.so)", field="crypto_source", path=crypto_source)
    return out


def _fill(template: str, config: AgentConfig) -> str:
    text = initramfs_tools.fill_common(template.replace("@COPY_PYTHON@", initramfs_tools.COPY_PYTHON))
    return (text.replace("@STDLIB_PATHS@", " ".join(m.replace(".", "/") for m in STDLIB_MODULES))
            .replace("@STDLIB_EXTENSIONS@", " ".join(STDLIB_EXTENSIONS))
            .replace("@IMPORT_CHECK@", IMPORT_CHECK)
            .replace("@AGENT_DIR@", AGENT_DIR).replace("@CONFIG@", CONFIG_PATH)
            .replace("@CA@", config.ca_file or CA_PATH).replace("@MAPPER@", config.mapper_name)
            .replace("@DEVICE_UNIT@", dracut.device_unit(config.mapper_name)))


def read_collection_file(rel: str) -> bytes:
    """A module of the agent's closure; a package's ``__init__.py`` is empty (only docstrings live there)."""
    if os.path.basename(rel) == "__init__.py":
        return b""
    data = collection_source(rel)
    if data is None:
        raise SnpError(f"cannot read the agent's module {rel}", field="agent", path=os.path.join(COLLECTION_ROOT, rel))
    return data


def agent_files(config: AgentConfig, ca_pem: bytes, crypto_source: str) -> list[PayloadFile]:
    """Every file of the agent for an image's root, sorted by destination."""
    config.validate()
    if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise SnpError("is not a PEM certificate", field="ca_pem")
    if config.ca_file not in (None, CA_PATH):
        raise SnpError(f"the payload installs the CA at {CA_PATH}; ca_file must be that", field="ca_file")
    files: list[PayloadFile] = []
    collection = f"{AGENT_DIR}/{PACKAGE.replace('.', '/')}"
    for rel in agent_modules():
        files.append(PayloadFile(f"{collection}/{rel}", read_collection_file(rel)))
    for package in ("ansible_collections", "ansible_collections/snpguard"):
        files.append(PayloadFile(f"{AGENT_DIR}/{package}/__init__.py", b""))
    files.append(PayloadFile(f"{collection}/__init__.py", b""))
    for rel, data, mode in crypto_files(crypto_source):
        files.append(PayloadFile(f"{AGENT_DIR}/{rel}", data, mode))
    files.append(PayloadFile(f"{AGENT_DIR}/snpguard-agent.py", ENTRY_SCRIPT.encode(), 0o755))
    files.append(PayloadFile(CONFIG_PATH, render_config(config)))
    files.append(PayloadFile(CA_PATH, ca_pem))
    for dest, template in ((initramfs_tools.HOOK_PATH, initramfs_tools.HOOK),
                           (initramfs_tools.LOCAL_TOP_PATH, initramfs_tools.LOCAL_TOP),
                           (initramfs_tools.PANIC_PATH, initramfs_tools.PANIC),
                           (f"{dracut.MODULE_DIR}/module-setup.sh", dracut.MODULE_SETUP),
                           (f"{dracut.MODULE_DIR}/snpguard-agent.sh", dracut.HOOK)):
        files.append(PayloadFile(dest, _fill(template, config).encode(), 0o755))
    files.append(PayloadFile(f"{dracut.MODULE_DIR}/snpguard-agent.service", _fill(dracut.UNIT, config).encode()))
    seen: set[str] = set()
    for item in files:
        if item.dest in seen:
            raise SnpError(f"two payload files for {item.dest}", field="agent")
        seen.add(item.dest)
    return sorted(files, key=lambda f: f.dest)

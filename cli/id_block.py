# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard id-block``: sign, verify and show SEV-SNP ID blocks and ID auth blocks.

* ``snpguard id-block --id-key K --measurement HEX [...]`` — the same backend as
  the ``snp_id_block`` module; prints QEMU's ``id-block=``/``id-auth=``/
  ``author-key-enabled=`` properties and the key digests (``--json``: a JSON object).
* ``snpguard id-block verify --id-block X --id-auth Y`` — parse both and check
  every signature; exit 0 only when valid, 1 when not.
* ``snpguard id-block show --id-block X [--id-auth Y]`` — decode for people.

X and Y are files (base64 or raw) or base64 strings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..plugins.module_utils.common.fileio import read_file
from ..plugins.module_utils.idblock.snp_id_block import IdBlockRequest, ensure_id_block
from ..plugins.module_utils.snp import sev_keys
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.id_block import (
    ID_AUTH_SIZE,
    ID_BLOCK_SIZE,
    LD_SIZE,
    IdAuth,
    IdBlock,
    decode_blob,
    parse_hex,
)
from ..plugins.module_utils.snp.policy import describe_policy
from .common import EXIT_REFUSED, EXIT_RUNTIME, add_json, examples, exit_code_for, readable

_MAX_INPUT = 64 * 1024
_EXAMPLE_LD = "076f052d08bda7a700aa2a608c5caa6b00ebad297b6d68a85a45b1e669a558b67e1b91d284a301fe63c4fa0750467eed"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "id-block",
        help="create, verify or show SEV-SNP ID blocks and ID auth blocks",
        description="Sign the ID block of a guest (expected measurement, family/image ID, SVN, policy) with an "
        "ECDSA P-384 ID key and optional author key, and print the QEMU sev-snp-guest properties. Existing "
        "output files are kept when they already hold a valid signature of the same block by the same keys.",
        epilog=examples(
            "snpguard id-block --id-key id.pem --author-key author.pem --generate-keys \\",
            f"--measurement {_EXAMPLE_LD} \\",
            "--policy smt=1,debug=0 --id-block-out id_block.b64 --id-auth-out id_auth.b64",
            "snpguard id-block verify --id-block id_block.b64 --id-auth id_auth.b64",
            "snpguard id-block show --id-block id_block.b64",
        ),
    )
    parser.add_argument("--id-key", metavar="PEM", help="ID private key (PEM, P-384); required to create")
    parser.add_argument("--author-key", metavar="PEM", help="author private key (PEM, P-384), signs the ID key")
    parser.add_argument(
        "--generate-keys",
        action="store_true",
        help="create missing key files as new P-384 keys (0600); existing keys are never replaced",
    )
    parser.add_argument("--id-key-passphrase-file", metavar="FILE", help="file holding the ID key's passphrase")
    parser.add_argument("--author-key-passphrase-file", metavar="FILE", help="file holding the author key's passphrase")
    parser.add_argument("--measurement", metavar="HEX", help="expected launch digest, 96 hex characters")
    parser.add_argument("--family-id", metavar="HEX", help="FAMILY_ID, 32 hex characters (default zeros)")
    parser.add_argument("--image-id", metavar="HEX", help="IMAGE_ID, 32 hex characters (default zeros)")
    parser.add_argument("--guest-svn", metavar="N", type=int, default=0, help="guest SVN (default 0)")
    parser.add_argument(
        "--policy",
        metavar="POLICY",
        default="0x30000",
        help="guest policy: integer, 0x-hex, or name=value list such as smt=1,debug=0 (default 0x30000)",
    )
    parser.add_argument("--id-block-out", metavar="FILE", help="write the ID block (base64) here")
    parser.add_argument("--id-auth-out", metavar="FILE", help="write the ID auth block (base64) here")
    parser.add_argument("--check", action="store_true", help="report what would change; write nothing")
    add_json(parser, "print a JSON object")
    parser.set_defaults(handler=_create)

    actions = parser.add_subparsers(dest="id_block_action", metavar="[verify|show]",
                                    help="verify: check signatures and expectations; show: decode")
    verify = actions.add_parser(
        "verify",
        help="check an ID block and ID auth block",
        description="Parse the ID block and ID auth block and verify every signature (ID block by the ID key, "
        "ID key by the author key). Exit 0 only when everything is valid, 1 otherwise.",
        epilog=examples(
            "snpguard id-block verify --id-block id_block.b64 --id-auth id_auth.b64 \\",
            "--id-key-pub id.pem --author-key-digest HEX",
            "snpguard id-block verify --id-block id_block.b64 --id-auth id_auth.b64 --json",
        ),
    )
    _add_block_inputs(verify, auth_required=True)
    verify.add_argument("--id-key-pub", metavar="PEM", help="the ID auth must carry this ID key (public or private)")
    verify.add_argument(
        "--author-key-pub", metavar="PEM", help="the ID auth must carry this author key (public or private)"
    )
    verify.add_argument(
        "--id-key-digest",
        metavar="HEX",
        dest="expect_id_key_digest",
        help="the ID key must have this digest (ID_KEY_DIGEST)",
    )
    verify.add_argument(
        "--author-key-digest",
        metavar="HEX",
        dest="expect_author_key_digest",
        help="the author key must have this digest (AUTHOR_KEY_DIGEST)",
    )
    verify.add_argument(
        "--measurement", metavar="HEX", dest="expect_measurement", help="the ID block's LD must be this launch digest"
    )
    verify.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print a JSON object")
    verify.set_defaults(handler=_verify)

    show = actions.add_parser(
        "show",
        help="decode an ID block and/or ID auth block",
        description="Print the fields of an ID block and/or ID auth block; with both, also whether the "
        "signatures verify.",
        epilog=examples("snpguard id-block show --id-block id_block.b64 --id-auth id_auth.b64",
                        "snpguard id-block show --id-auth id_auth.b64 --json"),
    )
    _add_block_inputs(show, auth_required=False)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print a JSON object")
    show.set_defaults(handler=_show)


def _add_block_inputs(parser: argparse.ArgumentParser, *, auth_required: bool) -> None:
    parser.add_argument(
        "--id-block",
        metavar="FILE|B64",
        dest="id_block_in",
        required=auth_required,
        help="ID block: a file (base64 or raw 96 bytes) or a base64 string",
    )
    parser.add_argument(
        "--id-auth",
        metavar="FILE|B64",
        dest="id_auth_in",
        required=auth_required,
        help="ID auth block: a file (base64 or raw 4096 bytes) or a base64 string",
    )


# -- create --------------------------------------------------------------------------------


def _read_passphrase(path: str | None, field: str) -> str | None:
    if path is None:
        return None
    return read_file(path, field, limit=4096).decode("utf-8").rstrip("\r\n")


def _create(args: argparse.Namespace) -> int:
    for flag, value in (("--id-key", args.id_key), ("--measurement", args.measurement)):
        if value is None:
            raise SnpError("is required to create an ID block (or use 'verify' / 'show')", field=flag)
    request = IdBlockRequest(
        id_key=args.id_key,
        id_key_passphrase=_read_passphrase(args.id_key_passphrase_file, "id_key_passphrase_file"),
        author_key=args.author_key,
        author_key_passphrase=_read_passphrase(args.author_key_passphrase_file, "author_key_passphrase_file"),
        generate_keys=args.generate_keys,
        measurement=args.measurement,
        family_id=args.family_id,
        image_id=args.image_id,
        guest_svn=args.guest_svn,
        policy=args.policy,
        id_block_path=args.id_block_out,
        id_auth_path=args.id_auth_out,
        check_mode=args.check,
    )
    result = ensure_id_block(request)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    verb = "would create" if args.check else "created"
    for path in result["keys_created"]:
        print(f"{verb} key {path}", file=sys.stderr)
    verb = "would write" if args.check else "wrote"
    for path in result["files_written"]:
        print(f"{verb} {path}", file=sys.stderr)
    if result["qemu"] is not None:
        for key, value in result["qemu"].items():
            print(f"{key}={value}")
    else:
        print(f"id-block={result['id_block']}")
    print(f"policy={result['policy']:#x}")
    print(f"id-key-digest={result['id_key_digest'] or '(new key)'}")
    if request.author_key is not None:
        print(f"author-key-digest={result['author_key_digest'] or '(new key)'}")
    return 0


# -- inputs of verify / show ------------------------------------------------------------------


def _load_blob(value: str, size: int, field: str) -> bytes:
    """A structure from a file (base64 or raw) or from a base64 string on the command line."""
    if os.path.exists(value):
        return decode_blob(read_file(value, field, limit=_MAX_INPUT), size, field, path=value)
    try:
        return decode_blob(value, size, field)
    except SnpError as exc:
        raise SnpError(f"is neither an existing file nor base64 of {size} bytes ({exc.message})", field=field) from exc


def _load_public(path: str, field: str) -> Any:
    return sev_keys.load_public_key(read_file(path, field, limit=_MAX_INPUT), field=field, path=path)


def _parse_inputs(args: argparse.Namespace) -> tuple[IdBlock | None, IdAuth | None]:
    block = auth = None
    if args.id_block_in is not None:
        block = IdBlock.from_bytes(_load_blob(args.id_block_in, ID_BLOCK_SIZE, "--id-block"), field="--id-block")
    if args.id_auth_in is not None:
        auth = IdAuth.from_bytes(_load_blob(args.id_auth_in, ID_AUTH_SIZE, "--id-auth"), field="--id-auth")
    return block, auth


def _summary(block: IdBlock | None, auth: IdAuth | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if block is not None:
        out["id_block"] = dict(block.to_dict(), policy_description=describe_policy(block.policy)[1:])
    if auth is not None:
        out["id_auth"] = auth.to_dict()
    return out


def _hex_or_none(value: str | None, size: int, field: str) -> bytes | None:
    return None if value is None else parse_hex(value, size, field)


def _expectations(args: argparse.Namespace) -> dict[str, Any]:
    """The expected values of ``verify``, parsed first: a malformed one is a usage error (exit 2), not "invalid"."""
    return {
        "measurement": _hex_or_none(args.expect_measurement, LD_SIZE, "--measurement"),
        "id_key_digest": _hex_or_none(args.expect_id_key_digest, sev_keys.DIGEST_SIZE, "--id-key-digest"),
        "author_key_digest": _hex_or_none(args.expect_author_key_digest, sev_keys.DIGEST_SIZE,
                                          "--author-key-digest"),
        "id_public_key": _load_public(args.id_key_pub, "--id-key-pub") if args.id_key_pub else None,
        "author_public_key": _load_public(args.author_key_pub, "--author-key-pub") if args.author_key_pub else None,
    }


def _check(expect: dict[str, Any], block: IdBlock, auth: IdAuth) -> None:
    """Every check ``verify`` makes; raises ``SnpError`` naming the first failure."""
    if expect["measurement"] is not None and block.ld != expect["measurement"]:
        raise SnpError(f"the ID block's LD is {block.ld.hex()}", field="--measurement")
    auth.verify(block, id_public_key=expect["id_public_key"], author_public_key=expect["author_public_key"])
    if expect["id_key_digest"] is not None and auth.id_key_digest != expect["id_key_digest"]:
        raise SnpError(f"the ID key's digest is {auth.id_key_digest.hex()}", field="--id-key-digest")
    if expect["author_key_digest"] is not None:
        actual = auth.author_key_digest
        if actual != expect["author_key_digest"]:
            found = actual.hex() if actual is not None else "absent (no author key)"
            raise SnpError(f"the author key's digest is {found}", field="--author-key-digest")


def _verify(args: argparse.Namespace) -> int:
    expect = _expectations(args)
    error: SnpError | None = None
    block = auth = None
    try:
        block, auth = _parse_inputs(args)
        assert block is not None and auth is not None
        _check(expect, block, auth)
    except SnpError as exc:
        if exit_code_for(exc) == EXIT_RUNTIME:  # an unreadable file is not an invalid block
            raise
        error = exc
    if args.json:
        doc: dict[str, Any] = {"valid": error is None}
        if error is not None:
            doc["error"] = dict(error.as_dict(), message=error.message, code="invalid")
            doc["exit_code"] = EXIT_REFUSED
        doc.update(_summary(block, auth))
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif error is None:
        assert auth is not None
        print(
            "valid: ID_BLOCK_SIG verifies with the ID key"
            + (", ID_KEY_SIG verifies with the author key" if auth.author_key_enabled else " (no author key)")
        )
        print(f"id-key-digest={auth.id_key_digest.hex()}")
        if auth.author_key_digest is not None:
            print(f"author-key-digest={auth.author_key_digest.hex()}")
    else:
        print(f"snpguard id-block verify: invalid: {error}", file=sys.stderr)
    return 0 if error is None else 1


# -- show --------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    if args.id_block_in is None and args.id_auth_in is None:
        raise SnpError("give --id-block and/or --id-auth", field="--id-block")
    block, auth = _parse_inputs(args)
    doc = _summary(block, auth)
    if block is not None and auth is not None:
        try:
            auth.verify(block)
        except SnpError as exc:
            doc["signatures"] = {"valid": False, "error": exc.as_dict()}
        else:
            doc["signatures"] = {"valid": True}
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if "id_block" in doc:
        print("ID block:")
        for key, value in doc["id_block"].items():
            if key != "policy_description":
                print(f"  {key}: {readable(value)}")
        for line in doc["id_block"]["policy_description"]:
            print(f"    {line}")
    if "id_auth" in doc:
        print("ID auth:")
        for key, value in doc["id_auth"].items():
            print(f"  {key}: {'-' if value is None else readable(value)}")
    if "signatures" in doc:
        sig = doc["signatures"]
        print("signatures: " + ("valid" if sig["valid"] else f"INVALID ({sig['error']['msg']})"))
    return 0

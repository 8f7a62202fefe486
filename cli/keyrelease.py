# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard config|image|token``: the key-release server from a terminal.

``snpguard config login`` pins the server's CA on first use (it shows the SHA-256
fingerprint and asks, or takes ``--yes``/``--ca-sha256``), checks the API token, and
stores URL, token and CA in ``~/.config/snpguard/config.json`` (0600) and ``ca.pem``.
The token comes from ``SNPGUARD_TOKEN`` or a prompt on the terminal (``getpass``);
``--token`` still works but warns, since argv is visible to every user of the host.
Every other command reads that file; ``--url``, ``--token``, ``--ca-file`` and the
variables ``SNPGUARD_URL``, ``SNPGUARD_TOKEN``, ``SNPGUARD_CA_FILE`` override it.
Output is for people, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ..plugins.module_utils.common.fileio import atomic_write
from ..plugins.module_utils.keyrelease import cvm_register, registration
from ..plugins.module_utils.keyrelease.admin_client import (
    ApiError,
    KeyReleaseClient,
    ca_fingerprint_pem,
    fetch_server_ca,
    normalize_url,
    token_id,
)
from ..plugins.module_utils.snp.errors import SnpError
from . import image as image_verbs
from .common import Refused, UsageError, add_json, examples
from .image_convert import add_convert

TOKEN_ARGV_WARNING = ("snpguard: warning: --token puts the API token in the process list (visible to every user "
                      "of this host) and in the shell history; prefer SNPGUARD_TOKEN or the prompt of "
                      "'snpguard config login'")

POLICY_FLAGS = ("allow_debug", *registration.POLICY_FLAGS)
TCB_NAMES = registration.MIN_TCB_FIELDS


# -- configuration ---------------------------------------------------------------------------------


def config_path(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("SNPGUARD_CONFIG"):
        return os.environ["SNPGUARD_CONFIG"]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "snpguard", "config.json")


def load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SnpError(f"cannot read the client configuration: {exc}", field="config", path=path) from exc
    if not isinstance(values, dict):
        raise SnpError("must be a JSON object", field="config", path=path)
    return values


def save_config(path: str, values: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    atomic_write(path, (json.dumps(values, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def client_from(args: argparse.Namespace, *, need_token: bool = True) -> KeyReleaseClient:
    config = load_config(config_path(args.config))
    url = args.url or os.environ.get("SNPGUARD_URL") or config.get("url")
    if args.token:
        print(TOKEN_ARGV_WARNING, file=sys.stderr)
    token = args.token or os.environ.get("SNPGUARD_TOKEN") or config.get("token")
    ca_file = args.ca_file or os.environ.get("SNPGUARD_CA_FILE") or config.get("ca_file")
    if not url:
        raise UsageError("no server configured: run 'snpguard config login --url URL'", field="url")
    if need_token and not token:
        raise UsageError("no API token: run 'snpguard config login' or set SNPGUARD_TOKEN", field="token")
    return KeyReleaseClient(url, token, ca_file=ca_file)


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server (default: the saved configuration)")
    group.add_argument("--url", metavar="URL", help="server URL, e.g. https://keys.example:8443")
    group.add_argument("--token", metavar="TOKEN",
                       help="API token; visible in the process list (better: SNPGUARD_TOKEN or config login)")
    group.add_argument("--ca-file", metavar="FILE", help="pinned CA certificate (PEM)")
    group.add_argument("--config", metavar="FILE", help="client configuration (default ~/.config/snpguard/config.json)")
    add_json(parser)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _print_listing(args: argparse.Namespace, items: list[dict[str, Any]], empty: str,
                   line: Callable[[dict[str, Any]], str]) -> int:
    """A list command's output: JSON with --json, else one line per item, or what says there is none."""
    if args.json:
        _print_json(items)
    elif not items:
        print(empty)
    else:
        for item in items:
            print(line(item))
    return 0


def _confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing without a terminal to confirm on; add --yes", field="yes")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)  # stderr: stdout may be --json
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# -- parsers ---------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    config = subparsers.add_parser(
        "config", help="the key-release server this CLI talks to",
        description="Log in to a key-release server once (pin its CA, check the API token, save both 0600), "
                    "then every 'image' and 'token' command uses that configuration.",
        epilog=examples("snpguard config login --url https://keys.example.com:8443",
                        "snpguard config show"))
    config_actions = config.add_subparsers(dest="config_action", metavar="ACTION", required=True,
                                           help="login: save a server; show: what is saved")
    login = config_actions.add_parser(
        "login", help="pin the server's CA, check the token, save the configuration",
        description="Fetch the server's CA, show its SHA-256 and ask whether to trust it (or check it against "
                    "--ca-sha256, or take --ca-file), prove the API token with a request, and save URL, token and "
                    "CA to ~/.config/snpguard/config.json (0600). The token comes from SNPGUARD_TOKEN or is asked "
                    "for on the terminal (not echoed); --token works too, but the token is then visible in the "
                    "process list and kept in the shell history.",
        epilog=examples("snpguard config login --url https://keys.example.com:8443",
                        "SNPGUARD_TOKEN=sgt_... snpguard config login --url https://keys.example.com:8443 \\",
                        "--ca-sha256 95532fb5e352bd0f8d91697bc77e5d50fd6454f02a3955f7548a2fe5f9b91ff7"))
    login.add_argument("--url", required=True, metavar="URL", help="server URL, e.g. https://keys.example:8443")
    login.add_argument("--token", metavar="TOKEN",
                       help="API token; visible in the process list and shell history: prefer SNPGUARD_TOKEN or "
                            "the prompt")
    login.add_argument("--ca-file", metavar="FILE", help="trust this CA (PEM) instead of trusting on first use")
    login.add_argument("--ca-sha256", metavar="HEX", help="the CA fingerprint you expect (no question asked)")
    login.add_argument("--yes", action="store_true", help="trust the presented CA without asking")
    login.add_argument("--config", metavar="FILE", help="where to save (default ~/.config/snpguard/config.json)")
    add_json(login)
    login.set_defaults(handler=_login)
    show = config_actions.add_parser(
        "show", help="the saved configuration (never the token's secret)",
        description="Print the saved server URL, CA file and fingerprint, and the token's id (never its secret).",
        epilog=examples("snpguard config show", "snpguard config show --json"))
    show.add_argument("--config", metavar="FILE", help="client configuration (default ~/.config/snpguard/config.json)")
    add_json(show)
    show.set_defaults(handler=_config_show)

    image = subparsers.add_parser(
        "image", help="register and manage images on the key-release server",
        description="Register an image (its measurements, the policy a guest must meet, its volume key sealed to "
                    "the server), and list, show, enable, disable, delete it or download its launch bundle; embed "
                    "a bundle into the image itself.",
        epilog=examples("snpguard image register debian13-web --measurement 1=HEX --sealed-key-file key.sealed",
                        "snpguard image list", "snpguard image show debian13-web"))
    actions = image.add_subparsers(dest="image_action", metavar="ACTION", required=True,
                                   help="register, list, show, enable, disable, delete, bundle or embed")
    reg = actions.add_parser(
        "register", help="register an image (idempotent; --check says what would change)",
        description="Register an image: identical content again changes nothing; other content under the same "
                    "name is refused (exit 1), naming what differs, unless --replace. The volume key is sent only "
                    "sealed to the server's ingestion key.",
        epilog=examples(
            "snpguard image register debian13-web --measurement 1=HEX --measurement 4=HEX \\",
            "--policy smt=true --min-tcb bootloader=9 --min-tcb tee=0 --min-tcb snp=23 --min-tcb microcode=213 \\",
            "--sealed-key-file volume-key.sealed --check",
            "snpguard image register debian13-web --staging-dir /srv/images/debian13-web.staging \\",
            "--firmware /usr/share/ovmf/OVMF.amdsev.fd --policy smt=true"))
    reg.add_argument("name", metavar="NAME", help="the image's name (unique on the server)")
    reg.add_argument("--measurement", dest="measurements", action="append", metavar="[VCPUS=]HEX",
                     help="launch measurement (96 hex digits), per vCPU count; repeatable (default 1 vCPU); "
                          "required unless --staging-dir, with which it is a cross-check")
    reg.add_argument("--staging-dir", metavar="DIR",
                     help="what a conversion staged (manifest.json, vmlinuz, initrd.img, cmdline, sealed key): "
                          "each file checked against the manifest, the measurements computed from them and "
                          "--firmware, the bundle built from the same files; NAME must be the staged image name")
    reg.add_argument("--vcpu-type", metavar="TYPE", help="the QEMU -cpu model the measurements were made for")
    reg.add_argument("--policy", action="append", metavar="NAME=VALUE",
                     help=f"policy constraint ({', '.join(POLICY_FLAGS)}=true|false, min_abi=MAJOR.MINOR)")
    reg.add_argument("--min-tcb", action="append", metavar="COMPONENT=N", help=f"{', '.join(TCB_NAMES)}; repeatable")
    reg.add_argument("--id-key-digest", dest="id_key_digests", action="append", metavar="HEX",
                     help="accepted ID_KEY_DIGEST (96 hex digits); repeatable")
    reg.add_argument("--author-key-digest", dest="author_key_digests", action="append", metavar="HEX",
                     help="accepted AUTHOR_KEY_DIGEST; repeatable")
    reg.add_argument("--generate-id-keys", action="store_true", help="the server signs ID blocks with its own key")
    reg.add_argument("--family-id", metavar="HEX", help="FAMILY_ID the guest must report (32 hex digits)")
    reg.add_argument("--image-id", metavar="HEX", help="IMAGE_ID the guest must report (32 hex digits)")
    reg.add_argument("--guest-svn", type=int, metavar="N", help="minimum GUEST_SVN")
    reg.add_argument("--host-data", metavar="HEX", help="HOST_DATA the guest must report (64 hex digits)")
    key = reg.add_mutually_exclusive_group()
    key.add_argument("--sealed-key-file", dest="sealed_volume_key_file", metavar="FILE",
                     help="volume key already sealed to the server's ingestion key (raw or base64)")
    key.add_argument("--sealed-key", dest="sealed_volume_key", metavar="B64",
                     help="the same, as base64 on the command line")
    key.add_argument("--volume-key-file", metavar="FILE",
                     help="raw volume key: sealed here in memory, never sent in plaintext")
    reg.add_argument("--kernel", metavar="FILE", help="kernel for the launch bundle")
    reg.add_argument("--initrd", metavar="FILE", help="initrd for the launch bundle")
    reg.add_argument("--cmdline", metavar="TEXT", help="kernel command line for the launch bundle")
    reg.add_argument("--firmware", metavar="FILE",
                     help="OVMF image (its SHA-384 goes into the bundle); required with --staging-dir")
    reg.add_argument("--firmware-sha384", metavar="HEX", help="the firmware's SHA-384 instead of --firmware")
    reg.add_argument("--launch", metavar="FILE", help="launch.json content for the bundle")
    reg.add_argument("--bundle", metavar="FILE", help="a prebuilt launch bundle instead of kernel/initrd")
    reg.add_argument("--replace", action="store_true", help="replace an image of this name with other content")
    reg.add_argument("--disabled", action="store_true", help="register it disabled")
    reg.add_argument("--check", action="store_true", help="only say what would change")
    _connection(reg)
    reg.set_defaults(handler=_image_register)

    listing = actions.add_parser("list", help="registered images",
                                 description="One line per image: name, id, state, vCPU counts, releases, refusals.",
                                 epilog=examples("snpguard image list", "snpguard image list --json"))
    _connection(listing)
    listing.set_defaults(handler=_image_list)
    for name, helptext, handler in (("show", "one image (by name or id)", _image_show),
                                    ("enable", "release keys to this image again", _image_enable),
                                    ("disable", "stop releasing keys to this image", _image_disable),
                                    ("delete", "delete an image and its keys", _image_delete)):
        sub = actions.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".",
                                 epilog=examples(f"snpguard image {name} debian13-web"
                                                 + (" --yes" if name == "delete" else "")))
        sub.add_argument("image", metavar="NAME|ID", help="the image's name or id")
        if name == "delete":
            sub.add_argument("--yes", action="store_true", help="do not ask")
        _connection(sub)
        sub.set_defaults(handler=handler)
    bundle = actions.add_parser("bundle", help="download the launch-artifacts bundle (tar.gz)",
                                description="Download the image's launch bundle and check it against the SHA-256 "
                                            "the server announces.",
                                epilog=examples("snpguard image bundle debian13-web -o web.bundle.tar.gz"))
    bundle.add_argument("image", metavar="NAME|ID", help="the image's name or id")
    bundle.add_argument("-o", "--output", metavar="FILE", help="default NAME.bundle.tar.gz here")
    _connection(bundle)
    bundle.set_defaults(handler=_image_bundle)
    image_verbs.add_actions(actions)
    add_convert(actions)

    token = subparsers.add_parser(
        "token", help="API tokens of the key-release server",
        description="Create, list and revoke the API tokens that 'image' and 'token' commands authenticate with.",
        epilog=examples("snpguard token create ci-deploy --expires-at 2027-01-01T00:00:00Z", "snpguard token list"))
    token_actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True,
                                         help="create, list or revoke")
    create = token_actions.add_parser(
        "create", help="create an API token (printed once)",
        description="Create an API token and print it once on stdout (its id and expiry go to stderr). A fresh "
                    "server's first token is made with the master password.",
        epilog=examples("snpguard token create ci-deploy --scope operator --expires-at 2027-01-01T00:00:00Z",
                        "snpguard token create first-admin --scope admin --master-password-file pw.txt \\",
                        "--url https://keys.example.com:8443 --ca-file ca.pem"))
    create.add_argument("name", metavar="NAME", help="a name for people (shown by 'token list')")
    create.add_argument("--expires-at", metavar="ISO8601",
                        help="expiry; a token minted by another never outlives it (default: the minting token's)")
    create.add_argument("--scope", choices=["operator", "admin"],
                        help="operator (default): images and audit; admin: also mints and revokes tokens")
    create.add_argument("--master-password-file", metavar="FILE",
                        help="authenticate with the master password (a fresh server's first token); "
                             "or set SNPGUARD_MASTER_PASSWORD")
    _connection(create)
    create.set_defaults(handler=_token_create)
    tlist = token_actions.add_parser("list", help="API tokens (never their secrets)",
                                     description="One line per token: id, state, scope, name, dates, who minted it.",
                                     epilog=examples("snpguard token list", "snpguard token list --json"))
    _connection(tlist)
    tlist.set_defaults(handler=_token_list)
    revoke = token_actions.add_parser("revoke", help="revoke an API token",
                                      description="Revoke a token by its id (16 hex digits) or the token itself.",
                                      epilog=examples("snpguard token revoke 3f2a9c0d11e4b5a6"))
    revoke.add_argument("token_ref", metavar="ID|TOKEN", help="the token's id, or the token itself")
    _connection(revoke)
    revoke.set_defaults(handler=_token_revoke)


# -- config ----------------------------------------------------------------------------------------


def login_token(args: argparse.Namespace) -> str:
    """The API token for ``config login``: --token (with a warning), SNPGUARD_TOKEN, or a prompt on the terminal."""
    if args.token:
        print(TOKEN_ARGV_WARNING, file=sys.stderr)
        return args.token
    from_env = os.environ.get("SNPGUARD_TOKEN", "").strip()
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise UsageError("no API token: set SNPGUARD_TOKEN, or run on a terminal to be asked for it "
                         "(--token TOKEN works too, but shows the token in the process list)", field="token",
                         code="no_token")
    entered = getpass.getpass("API token (input hidden): ").strip()
    if not entered:
        raise UsageError("no API token entered", field="token", code="no_token")
    return entered


def _login(args: argparse.Namespace) -> int:
    url = normalize_url(args.url)
    secret = login_token(args)
    path = config_path(args.config)
    directory = os.path.dirname(os.path.abspath(path))
    pem: str | None = None
    if args.ca_file:
        try:
            with open(args.ca_file, encoding="ascii") as handle:
                pem = handle.read()
        except (OSError, ValueError) as exc:
            raise SnpError(f"cannot read the CA: {exc}", field="ca_file", path=args.ca_file) from exc
        fingerprint = ca_fingerprint_pem(pem)
        how = f"given in {args.ca_file}"
    elif url.startswith("https://"):
        pem, fingerprint, length = fetch_server_ca(url)
        how = f"presented by the server (top of a chain of {length})"
    else:
        fingerprint, how = None, "none: PLAIN HTTP, nothing is encrypted or authenticated"
    out = sys.stderr if args.json else sys.stdout
    print(f"server:  {url}", file=out)
    print(f"CA:      {how}", file=out)
    if fingerprint:
        print(f"SHA-256: {fingerprint}", file=out)
    if pem and not args.ca_file:
        expected = (args.ca_sha256 or "").lower().replace(":", "").strip()
        if expected:
            if expected != fingerprint:
                raise Refused(f"the server presents CA {fingerprint}, not the expected {expected}", field="ca_sha256",
                              code="ca_mismatch")
        elif not _confirm("Trust this CA for this server?", args.yes):
            if args.json:
                raise Refused("the CA was not trusted; nothing saved", field="ca", code="declined")
            print("not saved", file=out)
            return 1
    ca_file = None
    if pem:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        ca_file = os.path.join(directory, "ca.pem")
        staged = ca_file + ".new"
        atomic_write(staged, pem.encode(), mode=0o644)
    try:
        client = KeyReleaseClient(url, secret, ca_file=ca_file + ".new" if ca_file else None)
        info = client.public_info()
        tokens = client.list_tokens()  # proves the token (any admin GET would)
    except BaseException:
        if ca_file:
            os.unlink(ca_file + ".new")
        raise
    if ca_file:
        os.replace(ca_file + ".new", ca_file)
    published = info.get("tls_ca_sha256")
    if fingerprint and published and published != fingerprint:
        print(f"warning: the server publishes CA {published}; pinned {fingerprint} (an operator-supplied chain?)",
              file=sys.stderr)
    ident = token_id(secret)
    values = {"url": url, "token": secret, "ca_file": ca_file, "ca_sha256": fingerprint}
    save_config(path, values)
    summary = {"url": url, "ca_file": ca_file, "ca_sha256": fingerprint, "token_id": ident, "config": path,
               "server_version": info.get("version"), "tokens": len(tokens)}
    if args.json:
        _print_json(summary)
    else:
        print(f"logged in: token {ident or '?'}, server {info.get('version')}; configuration saved to {path} (0600)")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    config = load_config(path)
    if not config:
        raise SnpError("no configuration saved: run 'snpguard config login'", field="config", path=path)
    shown = {"config": path, "url": config.get("url"), "ca_file": config.get("ca_file"),
             "ca_sha256": config.get("ca_sha256"), "token_id": token_id(config.get("token") or "")}
    if args.json:
        _print_json(shown)
    else:
        for key, value in shown.items():
            print(f"{key + ':':11}{value if value is not None else '-'}")
    return 0


# -- images ----------------------------------------------------------------------------------------


def _bool(text: str, field: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SnpError(f"{text!r} is not true or false", field=field)


def _pairs(items: list[str] | None, field: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SnpError(f"{item!r} is not NAME=VALUE", field=field)
        out.append((name.strip().replace("-", "_"), value.strip()))
    return out


def registration_options(args: argparse.Namespace) -> dict[str, Any]:
    staging_dir = getattr(args, "staging_dir", None)
    if not args.measurements and not staging_dir:
        raise UsageError("give --measurement (per vCPU count) or --staging-dir", field="measurements")
    if not staging_dir and not (args.sealed_volume_key or args.sealed_volume_key_file or args.volume_key_file):
        raise UsageError("give the volume key: --sealed-key-file, --sealed-key or --volume-key-file",
                         field="sealed_volume_key")
    measurements: dict[str, str] = {}
    for item in args.measurements or []:
        vcpus, sep, value = item.rpartition("=")
        vcpus = vcpus if sep else "1"
        if vcpus in measurements:
            raise SnpError(f"two measurements for {vcpus} vCPUs", field="measurement")
        measurements[vcpus] = value
    policy: dict[str, Any] = {}
    for name, value in _pairs(args.policy, "policy"):
        if name == "min_abi":
            policy[name] = value
        elif name in POLICY_FLAGS:
            policy[name] = _bool(value, f"policy.{name}")
        else:
            raise SnpError(f"unknown policy constraint {name!r} (known: {', '.join(POLICY_FLAGS)}, min_abi)",
                           field="policy")
    min_tcb: dict[str, int] = {}
    for name, value in _pairs(args.min_tcb, "min_tcb"):
        if name not in TCB_NAMES or not value.isdigit():
            raise SnpError(f"{name}={value} is not COMPONENT=N ({', '.join(TCB_NAMES)})", field="min_tcb")
        min_tcb[name] = int(value)
    options = {k: getattr(args, k) for k in (
        "name", "vcpu_type", "id_key_digests", "author_key_digests", "generate_id_keys", "family_id", "image_id",
        "guest_svn", "host_data", "sealed_volume_key", "sealed_volume_key_file", "volume_key_file", "kernel",
        "initrd", "cmdline", "firmware", "firmware_sha384", "launch", "bundle", "replace", "staging_dir")}
    options.update(measurements=measurements, policy=policy, min_tcb=min_tcb, state="present",
                   enabled=False if args.disabled else None)
    return options


def _image_line(image: dict[str, Any]) -> str:
    vcpus = ",".join(str(m["vcpus"]) for m in image["measurements"])
    state = "enabled" if image["enabled"] else "DISABLED"
    return (f"{image['name']:<28} {image['id']}  {state:<8}  vcpus {vcpus:<8} released {image['release_count']}"
            f"  refused {image['refusal_count']}")


def _print_image(image: dict[str, Any]) -> None:
    print(f"name:           {image['name']}")
    print(f"id:             {image['id']}")
    print(f"enabled:        {'yes' if image['enabled'] else 'NO'}")
    for m in image["measurements"]:
        print(f"measurement:    {m['vcpus']} vCPU{'s' if m['vcpus'] != 1 else ''}: {m['measurement']}"
              + ("  (ID block)" if m.get("id_block") else ""))
    policy = ", ".join(f"{k}={json.dumps(v) if isinstance(v, bool) else v}"  # as --policy takes them
                       for k, v in sorted(image["policy"].items()) if v is not None)
    print(f"policy:         {policy or '-'}")
    tcb = image.get("min_tcb")
    print(f"min TCB:        {', '.join(f'{k}={v}' for k, v in tcb.items()) if tcb else '-'}")
    for label, key in (("vCPU type", "vcpu_type"), ("family id", "family_id"), ("image id", "image_id"),
                       ("guest SVN", "guest_svn"), ("host data", "host_data"),
                       ("server ID key", "generated_id_key_digest"), ("bundle sha256", "bundle_sha256"),
                       ("content sha256", "content_sha256")):
        value = image.get(key)
        print(f"{label + ':':16}{value if value is not None else '-'}")
    for label, key in (("ID keys", "id_key_digests"), ("author keys", "author_key_digests")):
        print(f"{label + ':':16}{', '.join(image.get(key) or []) or '-'}")
    print(f"releases:       {image['release_count']} (refusals {image['refusal_count']}, "
          f"last {image.get('last_release_at') or '-'})")
    print(f"created:        {image['created_at']}  updated {image['updated_at']}")


def _image_register(args: argparse.Namespace) -> int:
    client = client_from(args)
    result = cvm_register.apply(client, registration_options(args), check_mode=args.check)
    if args.json:
        _print_json(result)
        return 0
    action = result["action"]
    words = {"create": "would be created", "replace": "would be replaced", "none": "is registered as given",
             "created": "registered", "replaced": "replaced", "unchanged": "already registered as given (unchanged)"}
    name = args.name
    print(f"image {name}: {words.get(action, action)}"
          + (f" (id {result['id']})" if result.get("id") else ""))
    before, after = result["diff"]["before"], result["diff"]["after"]
    for key in sorted(set(before) | set(after)):
        if before and before.get(key) != after.get(key):
            print(f"  {key}: {json.dumps(before.get(key))} -> {json.dumps(after.get(key))}")
    for vcpus, value in sorted((result.get("measurements") or {}).items(), key=lambda item: int(item[0])):
        print(f"  measured {vcpus} vCPU{'s' if vcpus != '1' else ''}: {value}")
    if args.check and result["action"] != "create":
        print("  (check mode cannot compare the volume key; the server does at registration)")
    return 0


def _image_list(args: argparse.Namespace) -> int:
    return _print_listing(args, client_from(args).list_images(), "no images registered", _image_line)


def _image_show(args: argparse.Namespace) -> int:
    image = client_from(args).resolve_image(args.image)
    if args.json:
        _print_json(image)
    else:
        _print_image(image)
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    client = client_from(args)
    image = client.resolve_image(args.image)
    changed = bool(image["enabled"]) != enabled
    if changed:
        image = client.set_image_enabled(image["id"], enabled)
    if args.json:
        _print_json(dict(image, changed=changed))
    else:
        state = "enabled" if enabled else "disabled"
        print(f"image {image['name']}: {state}" + ("" if changed else " (already)"))
    return 0


def _image_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def _image_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _image_delete(args: argparse.Namespace) -> int:
    client = client_from(args)
    image = client.resolve_image(args.image)
    if not _confirm(f"Delete image {image['name']} ({image['id']}) and its volume key? VMs of this image will "
                    "no longer unlock.", args.yes):
        if args.json:
            raise Refused("not confirmed; nothing deleted", field="yes", code="declined")
        print("not deleted")
        return 1
    out = client.delete_image(image["id"])
    if args.json:
        _print_json(dict(out, name=image["name"]))
    else:
        print(f"image {image['name']} ({image['id']}) deleted")
    return 0


def _image_bundle(args: argparse.Namespace) -> int:
    client = client_from(args)
    image = client.resolve_image(args.image)
    data, digest = client.bundle(image["id"])
    path = args.output or f"{image['name']}.bundle.tar.gz"
    atomic_write(path, data, mode=0o644)
    if args.json:
        _print_json({"path": path, "sha256": digest, "size": len(data), "image": image["name"], "id": image["id"]})
    else:
        print(f"{path}: {len(data)} bytes, sha256 {digest}")
    return 0


# -- tokens ----------------------------------------------------------------------------------------


def _master_password(args: argparse.Namespace) -> str | None:
    if args.master_password_file:
        try:
            with open(args.master_password_file, encoding="utf-8") as handle:
                return handle.readline().strip()
        except OSError as exc:
            raise SnpError(f"cannot read: {exc.strerror}", field="master_password_file",
                           path=args.master_password_file) from exc
    return os.environ.get("SNPGUARD_MASTER_PASSWORD") or None


def _token_create(args: argparse.Namespace) -> int:
    password = _master_password(args)
    client = client_from(args, need_token=password is None)
    created = client.create_token(args.name, args.expires_at, master_password=password, scope=args.scope)
    if args.json:
        _print_json(created)
    else:
        print(created["token"])
        expiry = f", expires {created['expires_at']}" if created.get("expires_at") else ""
        print(f"token {created['id']} ({created['name']}{expiry}) created; it is shown only this once",
              file=sys.stderr)
    return 0


def _token_line(t: dict[str, Any]) -> str:
    return (f"{t['id']}  {t['state']:<8} {t.get('scope') or '-':<8} {t['name']:<24} created {t['created_at']}"
            f"  expires {t.get('expires_at') or '-'}  last used {t.get('last_used_at') or '-'}"
            f"  minted by {t.get('parent_id') or 'master password'}")


def _token_list(args: argparse.Namespace) -> int:
    return _print_listing(args, client_from(args).list_tokens(), "no tokens", _token_line)


def _token_revoke(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        out = client.revoke_token(args.token_ref)
    except ApiError as exc:
        if exc.status == 404:
            raise Refused(f"no token {args.token_ref!r}", field="id", code="not_found") from exc
        raise
    if args.json:
        _print_json(out)
    else:
        print(f"token {out['id']} revoked")
    return 0

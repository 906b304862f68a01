"""The configuration files of one ``AsteriskSandbox`` instance, as text.

What it does: ``pbxcal_manager_conf`` is the shipped ``manager.d/pbxcal.conf`` with
only its ``secret`` line replaced (the sandbox uses the files an admin installs,
unchanged: they are package data of ``pbxcal.pbx``, ``CONTRIB_DIR``); around them the
other functions write what a test PBX needs: ``asterisk.conf`` with every directory
inside the instance, the explicit module list, AMI on loopback with an all-privileges
admin user, PJSIP endpoints on UDP loopback, and a dialplan that sends internal
extensions through pbxcal's hook and everything else to the ``pstn`` endpoint (E.164
numbers *and* any other digit string that is not an internal extension, as a real
trunk route would).

What it must not do: write files, pick ports or start anything (``AsteriskSandbox``
does). Its names are importable from ``pbxcal.testing.asterisk`` too.
Start reading at ``extensions_conf``, then ``pjsip_conf``.
"""

from __future__ import annotations

import importlib.resources
import re
import secrets
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from pbxcal.testing.asterisk_root import SandboxError

__all__ = [
    "CONTRIB_DIR",
    "SHIPPED_SECRET_LINE",
    "asterisk_conf",
    "extensions_conf",
    "manager_conf",
    "moddir_inside",
    "modules_conf",
    "pbxcal_manager_conf",
    "pjsip_conf",
]

#: The Asterisk config files pbxcal ships (package data; ``contrib/asterisk`` links here).
CONTRIB_DIR: Traversable = importlib.resources.files("pbxcal.pbx") / "asterisk"
SHIPPED_SECRET_LINE = re.compile(r"^secret\s*=.*$", re.MULTILINE)

# Loaded explicitly (autoload=no): boot in about a second, no network probing.
_MODULES = (
    "res_pjproject", "res_sorcery_config", "res_sorcery_memory", "res_sorcery_astdb",
    "res_pjsip", "res_pjsip_session", "res_pjsip_authenticator_digest",
    "res_pjsip_endpoint_identifier_user", "res_pjsip_registrar", "res_pjsip_sdp_rtp",
    "res_pjsip_caller_id", "res_pjsip_logger", "res_pjsip_pubsub", "res_pjsip_exten_state",
    "res_pjsip_outbound_publish", "res_pjsip_pidf_body_generator",
    "res_pjsip_dialog_info_body_generator", "res_rtp_asterisk", "chan_pjsip",
    "res_timing_timerfd", "bridge_simple", "bridge_native_rtp", "codec_ulaw",
    "pbx_config", "app_dial", "app_stack", "app_exec", "app_verbose", "func_db", "func_strings",
    "func_logic", "func_callerid", "func_devstate", "func_channel",
)  # fmt: skip


def pbxcal_manager_conf(contrib_dir: Traversable, secret: str) -> str:
    """The shipped manager.d/pbxcal.conf with only its secret line replaced."""
    source = contrib_dir / "manager.d" / "pbxcal.conf"
    try:
        shipped = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise SandboxError(f"cannot read {source}: {exc}") from exc
    if len(SHIPPED_SECRET_LINE.findall(shipped)) != 1:
        raise SandboxError(f"{source} must contain exactly one 'secret = ...' line")
    patched = SHIPPED_SECRET_LINE.sub(f"secret = {secret}", shipped)
    before = [ln for ln in shipped.splitlines() if not SHIPPED_SECRET_LINE.match(ln)]
    after = [ln for ln in patched.splitlines() if not SHIPPED_SECRET_LINE.match(ln)]
    assert before == after, "only the secret line may differ from the shipped file"
    return patched


def modules_conf() -> str:
    """No autoload: exactly the modules a test PBX needs."""
    return "[modules]\nautoload = no\n" + "".join(f"load = {m}.so\n" for m in _MODULES)


def asterisk_conf(inside: PurePosixPath | Path, moddir: str, name: str) -> str:
    """Every directory inside the instance (``inside``, as the chroot sees it)."""
    return (
        "[directories]\n"
        f"astetcdir => {inside}/etc\n"
        f"astmoddir => {moddir}\n"
        f"astvarlibdir => {inside}/lib\n"
        f"astdbdir => {inside}/lib\n"
        f"astkeydir => {inside}/lib\n"
        "astdatadir => /usr/share/asterisk\n"
        "astagidir => /usr/share/asterisk/agi-bin\n"
        f"astspooldir => {inside}/spool\n"
        f"astrundir => {inside}/run\n"
        f"astlogdir => {inside}/log\n"
        f"astcachedir => {inside}/cache\n"
        "astsbindir => /usr/sbin\n"
        "\n[options]\n"
        "verbose = 3\n"
        "documentation_language = en_US\n"
        "hideconnect = yes\n"
        f"systemname = {name}\n"
        f"entityid = 02:00:00:{secrets.token_hex(1)}:{secrets.token_hex(1)}:"
        f"{secrets.token_hex(1)}\n"
    )


def moddir_inside(root: Path) -> str:
    """Asterisk's module directory in ``root``, as the chroot sees it."""
    found = sorted(root.glob("usr/lib/*/asterisk/modules"))
    if not found:
        raise SandboxError(f"no usr/lib/*/asterisk/modules in {root}; rebuild the root")
    return "/" + str(found[0].relative_to(root))


def manager_conf(port: int, admin_username: str, admin_secret: str) -> str:
    """AMI on loopback ``port``: the shipped pbxcal user, and an admin with everything."""
    return (
        "[general]\n"
        "enabled = yes\n"
        f"port = {port}\n"
        "bindaddr = 127.0.0.1\n"
        "displayconnects = no\n"
        "\n"
        '#include "manager.d/pbxcal.conf"\n'
        "\n"
        f"[{admin_username}]\n"
        f"secret = {admin_secret}\n"
        "deny = 0.0.0.0/0.0.0.0\n"
        "permit = 127.0.0.1/255.255.255.255\n"
        "read = all\n"
        "write = all\n"
    )


def pjsip_conf(sip_port: int, endpoints: Sequence[str], context: str, password: str) -> str:
    """A UDP transport on loopback ``sip_port`` and one endpoint per name in
    ``endpoints`` (username = name, ``password``), dialling in ``context``."""
    parts = [
        "[global]\ntype = global\nuser_agent = pbxcal-sandbox\n\n"
        f"[transport-udp]\ntype = transport\nprotocol = udp\n"
        f"bind = 127.0.0.1:{sip_port}\n"
    ]
    for ep in endpoints:
        parts.append(
            f"\n[{ep}]\ntype = endpoint\ntransport = transport-udp\n"
            f"context = {context}\ndisallow = all\nallow = ulaw\n"
            f"auth = {ep}-auth\naors = {ep}\ndirect_media = no\n"
            f'callerid = "{ep}" <{ep}>\n'
            f"\n[{ep}-auth]\ntype = auth\nauth_type = userpass\n"
            f"username = {ep}\npassword = {password}\n"
            f"\n[{ep}]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n"
        )
    return "".join(parts)


def extensions_conf(phones_context: str) -> str:
    """The test dialplan around the shipped ``extensions_pbxcal.conf``."""
    return f"""\
[general]
static = yes
writeprotect = yes

[globals]
PBXCAL_OUTBOUND_CONTEXT = {phones_context}
PBXCAL_INTERNAL_CONTEXT = pbxcal-test-internal
PBXCAL_DIAL_TIMEOUT = 30

#include "extensions_pbxcal.conf"

; What the phones dial; also the context forwarding targets are dialled in.
[{phones_context}]
include => pbxcal-test-internal
include => pbxcal-test-outbound
include => pbxcal-hints

; Internal extensions: the pbxcal hook, then the extension's own phone.
[pbxcal-test-internal]
exten => _XXX,1,Gosub(pbxcal-forward,s,1(${{EXTEN}}))
 same => n,GotoIf($["${{GOSUB_RETVAL}}" != ""]?unanswered)
 same => n,Dial(PJSIP/${{EXTEN}},30)
 same => n(unanswered),Hangup()

; The PSTN: every E.164 number goes to the "pstn" endpoint (the user part carries it),
; and so does every other digit string that is not an internal extension (national
; numbers, short codes like 118218 or 1120), as a real outbound route would send them.
[pbxcal-test-outbound]
exten => _+X.,1,Dial(PJSIP/${{EXTEN}}@pstn,30)
 same => n,Hangup()
exten => _X.,1,Dial(PJSIP/${{EXTEN}}@pstn,30)
 same => n,Hangup()
"""

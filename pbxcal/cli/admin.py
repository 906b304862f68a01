"""``pbxcal admin-token create|list|revoke`` and ``pbxcal invitations create|list``.

``admin-token create --name NAME [--pbx X ...]`` prints the new bearer token of the
admin API once, on standard output only (the store keeps its SHA-256; a lost token is
revoked and made again); without ``--pbx`` the token sees every PBX. ``invitations
create --pbx X --extension 101 [--email a@b]`` prints the invitation's URL and, with
``--email`` and ``[smtp]``, e-mails it. Every change is written to the audit log with
the actor ``cli:<user>``. The work is done by ``pbxcal.admin`` (the admin API calls
the same functions). Start reading at ``run_admin_token``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from pbxcal.cli.common import global_options, load, opened_store, wants_json

if TYPE_CHECKING:
    from pbxcal.store.portal import AdminToken


def add_admin_commands(sub: Any) -> None:
    """Register ``admin-token`` and ``invitations``."""
    common = global_options(json=True)
    tokens = sub.add_parser(
        "admin-token",
        parents=[common],
        help="manage bearer tokens of the admin API",
        description="Create, list or revoke the tokens the admin API (/api/v1) accepts. "
        "A token is shown once, when it is made; the store keeps only its hash.",
    )
    actions = tokens.add_subparsers(
        dest="token_command", required=True, metavar="ACTION", parser_class=type(tokens)
    )
    create = actions.add_parser("create", parents=[common], help="make a token, print it once")
    create.add_argument("--name", required=True, help="names the token (and the audit log's actor)")
    create.add_argument(
        "--pbx",
        action="append",
        metavar="NAME",
        help="a PBX the token may see (repeat for more; default: every PBX)",
    )
    actions.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a token at once")
    revoke.add_argument("name", metavar="NAME")
    tokens.set_defaults(handler=run_admin_token)

    invitations = sub.add_parser(
        "invitations",
        parents=[common],
        help="invite customers to link their calendar in the portal",
        description="Create a single-use, expiring link ([portal] invitation_hours) with "
        "which a customer links a calendar to one extension, or list invitations.",
    )
    actions = invitations.add_subparsers(
        dest="invitation_command", required=True, metavar="ACTION", parser_class=type(invitations)
    )
    create = actions.add_parser("create", parents=[common], help="make an invitation URL")
    create.add_argument("--pbx", required=True, metavar="NAME")
    create.add_argument("--extension", required=True, metavar="EXT")
    create.add_argument("--email", metavar="ADDRESS", help="e-mail the URL (needs [smtp])")
    create.add_argument(
        "--language", choices=("en", "nl"), help="of the e-mail (default: the portal's first)"
    )
    actions.add_parser("list", parents=[common], help="list invitations, newest first")
    invitations.set_defaults(handler=run_invitations)


def run_admin_token(ns: argparse.Namespace) -> int:
    from pbxcal.admin.tokens import create_admin_token

    config = load(ns)
    with opened_store(ns, config) as (store, where):
        if ns.token_command == "create":  # noqa: S105
            record, token = create_admin_token(store, ns.name, ns.pbx, config.pbxes)
            store.record_audit(_actor(), "token.create", f"token:{record.name}",
                               {"pbxes": list(record.pbxes) if record.pbxes else None})  # fmt: skip
            if wants_json(ns):
                print(json.dumps({**_token_json(record), "token": token, "store": where}))
            else:
                sees = ", ".join(record.pbxes) if record.pbxes else "every PBX"
                print(
                    f"admin token {record.name!r} created in {where} (sees {sees}); it is shown "
                    "only now:",
                    file=sys.stderr,
                )
                print(token)
        elif ns.token_command == "list":  # noqa: S105
            found = store.list_admin_tokens()
            if wants_json(ns):
                print(json.dumps({"store": where, "tokens": [_token_json(t) for t in found]}))
            elif not found:
                print(f"no admin tokens in {where}")
            for record in found if not wants_json(ns) else ():
                state = f"revoked {_when(record.revoked_at)}" if record.revoked_at else "active"
                sees = ",".join(record.pbxes) if record.pbxes else "*"
                used = _when(record.last_used_at) or "never used"
                print(f"{record.name:<24} {state:<30} pbx {sees:<16} {used}")
        else:
            record = store.revoke_admin_token(ns.name)
            store.record_audit(_actor(), "token.revoke", f"token:{record.name}")
            if wants_json(ns):
                print(json.dumps({"revoked": record.name, "store": where}))
            else:
                print(f"admin token {record.name!r} revoked in {where}")
    return 0


def run_invitations(ns: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from pbxcal.admin.invitations import create_invitation, invitation_record, mail_invitation

    config = load(ns)
    with opened_store(ns, config) as (store, where):
        now = datetime.now(UTC)
        if ns.invitation_command == "list":
            found = store.list_invitations()
            if wants_json(ns):
                records = [invitation_record(i, now) for i in found]
                print(json.dumps({"store": where, "invitations": records}))
                return 0
            if not found:
                print(f"no invitations in {where}")
            for invitation in found:
                record = invitation_record(invitation, now)
                link = f" -> link {record['link_id']}" if record["link_id"] else ""
                print(f"{record['id']:>4}  ext {record['extension']:<6} {record['pbx']:<8} "
                      f"{record['state']:<8} until {record['expires_at']}{link}")  # fmt: skip
            return 0
        actor = _actor()
        invitation, url = create_invitation(
            store, config, ns.pbx, ns.extension, email=ns.email, created_by=actor
        )
        emailed, mail_error = False, None
        if ns.email:
            emailed, mail_error = asyncio.run(mail_invitation(config, ns.email, url, ns.language))
        store.record_audit(actor, "invitation.create", f"invitation:{invitation.id}",
                           {"pbx": invitation.pbx, "extension": invitation.extension,
                            "emailed": emailed})  # fmt: skip
    if wants_json(ns):
        answer = {
            "invitation": invitation_record(invitation, now),
            "url": url,
            "emailed": emailed,
            "mail_error": mail_error,
            "store": where,
        }
        print(json.dumps(answer))
    else:
        print(url)
        print(f"invitation {invitation.id} for extension {invitation.extension} on "
              f"{invitation.pbx} valid until {invitation_record(invitation, now)['expires_at']}",
              file=sys.stderr)  # fmt: skip
        if emailed:
            print(f"e-mailed to {ns.email}", file=sys.stderr)
        elif mail_error:
            print(f"pbxcal: warning: not e-mailed: {mail_error}", file=sys.stderr)
    return 0 if not mail_error else 1


def _token_json(record: AdminToken) -> dict[str, Any]:
    return {
        "name": record.name,
        "pbxes": list(record.pbxes) if record.pbxes is not None else None,
        "created_at": _when(record.created_at),
        "revoked_at": _when(record.revoked_at),
        "last_used_at": _when(record.last_used_at),
    }


def _when(moment: Any) -> str | None:
    return None if moment is None else str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _actor() -> str:
    import getpass
    import os

    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"

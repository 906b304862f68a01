"""``pbxcal links add|list|show|sync|remove|disable|enable``: the calendars in the store.

Every command works on the store the service uses (``common.opened_store``) and says
which store it wrote. A source is checked with the config's own rule
(``pbxcal.calendars.locations.check_source``) before it is stored; what ``list``
prints is redacted (``redact_url``: a private URL's token never shows) and made
``printable`` (stored text cannot drive the terminal).

``show`` prints one link with its status (``pbxcal.calendars.health``), its last
successful sync, its last error and its sync log; ``sync`` reads its calendar once, now
(``link_sync.sync_once``). Must not import the service daemon. Start reading at
``run_links``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import TYPE_CHECKING, Any

from pbxcal.cli import args as parse
from pbxcal.cli.common import global_options, load, opened_store, wants_json
from pbxcal.cli.secret_input import add_secret_option
from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Link, Store

#: Anything URL-shaped inside a stored message (older sync-log lines kept raw URLs).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def add_links(sub: Any) -> None:
    common = global_options(json=True)
    p = sub.add_parser(
        "links",
        parents=[common],
        help="manage calendar links in the store",
        description="Add, list, remove, disable or enable the calendars that drive "
        "extensions, in the store the service uses. A running service picks changes up "
        "within seconds. --config, --store and --json may stand before or after ACTION.",
    )
    links = p.add_subparsers(
        dest="links_command", required=True, metavar="ACTION", parser_class=type(p)
    )
    add = links.add_parser("add", parents=[common], help="link a calendar to an extension")
    add.add_argument("--extension", required=True, metavar="EXT")
    add.add_argument(
        "--source",
        metavar="PATH|URL|ID",
        help="ics: a local .ics file or an http(s)/webcal URL (the rules of [[link]] "
        "source); caldav: the calendar's (or server's) URL; google: the calendar id; "
        "graph: the mailbox (app-only) or me (with --grant-file, the default)",
    )
    add.add_argument("--pbx", metavar="NAME", help="the PBX (default: the first configured)")
    add.add_argument(
        "--timezone", type=parse.zone, metavar="TZ", help="zone for all-day and floating events"
    )
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.add_argument(
        "--provider",
        choices=("ics", "caldav", "google", "graph", "ews"),
        default="ics",
        help="ics (default): --source is a file or URL; caldav: --source is the calendar's "
        "URL (or the server's, with --calendar NAME), with --username and the password "
        "from --password-file or a prompt; google: --source is the calendar id "
        "(default primary), with --credentials-file; graph (Microsoft 365, app-only): "
        "--source is the mailbox, with --tenant, --client-id and the client secret from "
        "--client-secret-file or a prompt, or (delegated) --grant-file from `links authorize "
        "microsoft`; ews (on-premises Exchange): --source is the "
        "EWS URL (.../EWS/Exchange.asmx) or --autodiscover, with --mailbox, --username and "
        "the password, or --auth oauth with --tenant, --client-id and the client secret",
    )
    add.add_argument("--mailbox", metavar="ADDRESS", help="ews: the mailbox to read")
    add.add_argument(
        "--auth",
        choices=("ntlm", "basic", "oauth"),
        default="ntlm",
        help="ews: NTLM, basic, or oauth (an Entra ID app's client credentials: --tenant, "
        "--client-id, the client secret from --client-secret-file or a prompt)",
    )
    add.add_argument(
        "--autodiscover",
        action="store_true",
        help="ews: find the EWS URL from --mailbox's domain (instead of --source)",
    )
    add.add_argument("--dns-server", help=argparse.SUPPRESS)  # tests: autodiscover's DNS
    add.add_argument(
        "--impersonation",
        action="store_true",
        help="ews: --username is a service account impersonating --mailbox",
    )
    add.add_argument("--ca-bundle", metavar="FILE", help="ews: a PEM CA bundle to trust")
    add.add_argument("--tenant", metavar="ID", help="graph: the Entra ID tenant (id or domain)")
    add.add_argument("--client-id", metavar="ID", help="graph: the app registration's id")
    add_secret_option(add, "client-secret", "the app registration's client secret")
    add.add_argument(
        "--grant-file",
        metavar="FILE",
        help="graph: a user's delegated grant written by `links authorize microsoft` "
        "(instead of --tenant, --client-id and a client secret)",
    )
    for hidden in ("--authority-host", "--graph-url", "--ca-file"):  # tests: a fake Graph
        add.add_argument(hidden, help=argparse.SUPPRESS)
    add.add_argument("--username", metavar="USER", help="caldav: the account's user name")
    add.add_argument(
        "--calendar", metavar="NAME", help="caldav: pick this calendar on the server --source"
    )
    add_secret_option(add, "password", "the CalDAV (app-specific) password")
    add.add_argument(
        "--credentials-file",
        metavar="FILE",
        help="google: an authorized-user JSON (pbxcal's own consent flow or gcloud) or, "
        "with --subject, a Workspace service-account key with domain-wide delegation",
    )
    add.add_argument(
        "--subject", metavar="EMAIL", help="google: the agent a service account acts for"
    )
    add.add_argument("--api-endpoint", help=argparse.SUPPRESS)  # tests: a fake Google
    add.add_argument(
        "--no-check", action="store_true", help="do not read the calendar once before saving"
    )
    links.add_parser("list", parents=[common], help="list links with their status and last sync")
    show = links.add_parser("show", parents=[common], help="one link with its sync log")
    show.add_argument("id", type=parse.link_id, metavar="ID")
    show.add_argument("--limit", type=int, default=20, metavar="N", help="sync log lines")
    authorize = links.add_parser(
        "authorize",
        parents=[common],
        help="sign in to a Google or Microsoft account (OAuth with PKCE) and save its grant "
        "for links add",
        description="Prints the provider's sign-in address (open it in a browser on this "
        "machine), receives the answer on a loopback port and writes the grant to a new "
        "file (mode 0600). google: an authorized-user JSON for `links add --provider "
        "google --credentials-file FILE`; --client-file is the OAuth client (type Desktop "
        "app) from the Google Cloud console. microsoft: a grant for `links add --provider "
        "graph --grant-file FILE`; --client-id is the Entra ID app registration (a public "
        "client with the redirect URI http://localhost).",
    )
    authorize.add_argument("provider", choices=("google", "microsoft"),
                           help="the provider to sign in to")  # fmt: skip
    authorize.add_argument("--client-file", metavar="FILE",
                           help="google: the OAuth client JSON (Desktop app)")  # fmt: skip
    authorize.add_argument("--client-id", metavar="ID",
                           help="microsoft: the app registration's id")  # fmt: skip
    authorize.add_argument(
        "--tenant",
        default="organizations",
        metavar="ID",
        help="microsoft: organizations (default: any work account), common (also personal "
        "accounts), or the tenant's id or domain",
    )
    for hidden in ("--authority-host", "--ca-file"):  # tests: a fake Microsoft sign-in
        authorize.add_argument(hidden, help=argparse.SUPPRESS)
    authorize.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="where to write the authorized-user JSON (must not exist)",
    )
    authorize.add_argument("--login-hint", metavar="EMAIL", help="the account to suggest")
    authorize.add_argument("--timeout", type=float, default=300.0, metavar="S",
                           help="seconds to wait for the browser (default 300)")  # fmt: skip
    sync = links.add_parser(
        "sync", parents=[common], help="read one link's calendar now and print what changed"
    )
    sync.add_argument("id", type=parse.link_id, metavar="ID")
    for name, text in (
        ("remove", "remove a link and its stored events"),
        ("disable", "stop using a link (its forwardings end)"),
        ("enable", "use a disabled link again"),
    ):
        q = links.add_parser(name, parents=[common], help=text)
        q.add_argument("id", type=parse.link_id, metavar="ID")
    p.set_defaults(handler=run_links)


def run_links(ns: argparse.Namespace) -> int:
    if ns.links_command == "authorize":
        from pbxcal.cli.link_credentials import authorize_google, authorize_microsoft

        return authorize_microsoft(ns) if ns.provider == "microsoft" else authorize_google(ns)
    config = load(ns)
    if ns.links_command == "add":
        if ns.source is None and ns.provider == "ews" and ns.autodiscover:
            ns.source = ns.mailbox or ""  # the EWS URL is found from the address
        if ns.source is None:
            if ns.provider != "graph" or not ns.grant_file:
                raise InputError("--source is required")
            ns.source = "me"  # a delegated grant reads the signed-in user's mailbox
        if ns.provider == "ics":
            source = _checked_source(ns.source)
        else:
            from pbxcal.cli.link_credentials import checked_provider_source

            source = checked_provider_source(ns)
        pbx, extension = _checked_target(ns, config)
    with opened_store(ns, config) as (store, where):
        command = ns.links_command
        if command == "add":
            settings: dict[str, Any] = {"timezone": ns.timezone.key} if ns.timezone else {}
            if ns.provider == "ics":
                link = store.add_link(
                    extension, pbx, "ics", source, settings, active=not ns.disabled
                )
            else:
                from pbxcal.cli.link_credentials import add_provider_link

                link = add_provider_link(ns, config, store, extension, pbx, source, settings)
            _say(
                ns,
                f"link {link.id} added to {where}: extension {link.extension} on {link.pbx} "
                f"<- {_shown_source(link.source)}",
                {"added": link.id, "store": where},
            )
        elif command == "list":
            _print_links(store.list_links(), store, where, as_json=wants_json(ns))
        elif command == "show":
            _show_link(ns.id, ns.limit, store, where, as_json=wants_json(ns))
        elif command == "sync":
            from pbxcal.cli.link_sync import sync_once

            return sync_once(ns.id, config, store, where, as_json=wants_json(ns))
        elif command == "remove":
            from pbxcal.admin.operations import remove_link
            from pbxcal.store import load_key_ring

            store.use_keys(load_key_ring(config.secrets_key_file, config.secrets_key_credential))
            removal = remove_link(store, config, ns.id)  # revokes a Google grant first
            note = f" ({removal.note})" if removal.note else ""
            _say(ns, f"link {ns.id} removed from {where}{note}",
                 {"removed": ns.id, "store": where, "revoked": removal.revoked})  # fmt: skip
        else:
            link = store.set_link_active(ns.id, command == "enable")
            state = "enabled" if link.active else "disabled"
            _say(ns, f"link {link.id} {state} in {where}", {state: link.id, "store": where})
    return 0


def _checked_source(value: str) -> str:
    from pbxcal.calendars.locations import check_source

    problem = check_source(value)
    if problem is not None:
        raise InputError(f"--source {problem}")
    if "://" not in value and not os.path.isabs(value) and not value.startswith("~"):
        # the service runs elsewhere (systemd: in /): store the path it will find
        return os.path.abspath(value)
    return value


def _checked_target(ns: argparse.Namespace, config: Config) -> tuple[str, str]:
    from pbxcal.config.checks import show

    pbx = ns.pbx or next(iter(config.pbxes), None)
    if pbx is None or pbx not in config.pbxes:
        known = ", ".join(config.pbxes) or f"none in {config.source}"
        raise InputError(f"--pbx {show(pbx or '')}: not a configured PBX ({known})")
    extension: str = ns.extension
    if not config.policy.is_extension(extension):
        raise InputError(
            f"--extension {show(extension)} is not an extension "
            f"(pattern {config.policy.extension_pattern!r})"
        )
    return pbx, extension


def _say(ns: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    print(json.dumps(data) if wants_json(ns) else text)


def _shown_source(source: str) -> str:
    from pbxcal.core.redact import redact_url

    return redact_url(source)


def shown_message(message: str) -> str:
    """A stored message as it may be printed: URLs redacted, control codes escaped."""
    from pbxcal.core.redact import printable, redact_url

    return printable(_URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), message))


def _show_link(link_id: int, limit: int, store: Store, where: str, *, as_json: bool) -> None:
    from pbxcal.calendars.health import SUCCESS_RESULTS, link_status
    from pbxcal.core.redact import printable

    link = store.get_link(link_id)
    if link is None:
        raise InputError(f"no link {link_id} in {where} (see: links list)")
    log = store.sync_log(link_id, max(1, min(limit, 200)))
    success = next((e for e in log if e.result in SUCCESS_RESULTS), None)
    data = {
        "store": where,
        "id": link.id,
        "extension": printable(link.extension),
        "pbx": printable(link.pbx),
        "provider": printable(link.provider),
        "source": _shown_source(link.source),
        "active": link.active,
        "status": link_status(log[0].result if log else None, active=link.active),
        "last_successful_sync": _when(success.at) if success else None,
        "last_error": next(
            (shown_message(e.message) for e in log if e.result not in SUCCESS_RESULTS), None
        ),
        "sync_log": [
            {
                "at": _when(e.at),
                "result": printable(e.result),
                "accepted": e.accepted,
                "rejected": e.rejected,
                "message": shown_message(e.message),
            }
            for e in log
        ],
    }
    if as_json:
        print(json.dumps(data))
        return
    print(f"link {link.id} in {where}: extension {data['extension']} on {data['pbx']}")
    print(f"  source    {data['provider']} {data['source']}")
    print(f"  status    {data['status']}")
    print(f"  last good {data['last_successful_sync'] or 'never'}")
    if data["last_error"]:
        print(f"  last error {data['last_error']}")
    for entry in data["sync_log"]:  # type: ignore[attr-defined]
        rejected = ", ".join(f"{n} {r}" for r, n in sorted(entry["rejected"].items()))
        counts = f"{entry['accepted']} accepted" + (f", rejected: {rejected}" if rejected else "")
        print(f"  {entry['at']}  {entry['result']:<12} {counts}")
        if entry["message"]:
            print(f"      {entry['message']}")


def _when(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _print_links(links: list[Link], store: Store, where: str, *, as_json: bool) -> None:
    from pbxcal.calendars.health import link_status
    from pbxcal.core.redact import printable

    last = store.last_sync()
    rows = []
    for link in links:
        entry = last.get(link.id)
        rows.append(
            {
                "id": link.id,
                "status": link_status(entry.result if entry else None, active=link.active),
                "extension": printable(link.extension),
                "pbx": printable(link.pbx),
                "source": _shown_source(link.source),
                "active": link.active,
                "origin": printable(link.origin),
                "last_sync": entry.at.strftime("%Y-%m-%dT%H:%M:%SZ") if entry else None,
                "last_result": printable(entry.result) if entry else None,
                "accepted": entry.accepted if entry else None,
                "rejected": entry.rejected if entry else None,
                "message": shown_message(entry.message) if entry else None,
            }
        )
    if as_json:
        print(json.dumps({"store": where, "links": rows}))
        return
    if not rows:
        print(f"no links in {where}")
        return
    for r in rows:
        state = r["status"]
        sync = f"{r['last_result']} at {r['last_sync']}" if r["last_sync"] else "never synced"
        print(
            f"{r['id']:>4}  ext {r['extension']:<6} {r['pbx']:<8} {state:<12} {sync:<34} "
            f"{r['source']}"
        )
        if r["message"] and r["last_result"] not in ("changed", "unchanged"):
            print(f"      {r['message']}")

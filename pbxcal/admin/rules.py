"""The rules every link operation applies first, whoever calls it (CLI, admin API, portal).

What it does: ``checked_target`` refuses a PBX that is not configured or an extension
that is not one of its; ``visible_link`` answers a link only to a caller who may see its
PBX (``LinkNotFound`` for "no such link" and "not yours" alike, so a scoped caller
cannot learn other tenants' link ids); ``shown_message`` makes a stored message safe to
show (URLs redacted, control codes escaped).

What it must not do: print, know HTTP or argparse, or change anything stored. The
operations themselves are in ``operations`` (adding, switching, removing) and
``overview`` (looking); all of these names are importable from ``operations`` too.
Start reading at ``visible_link``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING

from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Link, Store

__all__ = ["LinkNotFound", "checked_target", "shown_message", "visible_link"]

#: Anything URL-shaped inside a stored message (older sync-log lines kept raw URLs).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class LinkNotFound(InputError):
    """No such link, or one the caller may not see (the same answer for both)."""

    def __init__(self, link_id: int) -> None:
        super().__init__(f"no link {link_id}")
        self.link_id = link_id


def checked_target(config: Config, pbx: str, extension: str) -> None:
    """``InputError`` unless ``pbx`` is configured and ``extension`` is one of its."""
    from pbxcal.config.checks import show

    if pbx not in config.pbxes:
        known = ", ".join(config.pbxes) or f"none in {config.source}"
        raise InputError(f"pbx {show(pbx)}: not a configured PBX ({known})")
    if not config.policy.is_extension(extension):
        raise InputError(
            f"extension {show(extension)} is not an extension "
            f"(pattern {config.policy.extension_pattern!r})"
        )
    listed = config.pbxes[pbx].extensions
    if listed and extension not in listed:
        raise InputError(f"extension {show(extension)} is not one of {show(pbx)}'s extensions")


def visible_link(store: Store, link_id: int, pbxes: Collection[str] | None = None) -> Link:
    """The link, if it exists and its PBX is in ``pbxes`` (None: all); else ``LinkNotFound``.

    A link of another PBX is "not found", not "forbidden": a scoped caller cannot
    learn which ids other tenants' links have.
    """
    link = store.get_link(link_id)
    if link is None or (pbxes is not None and link.pbx not in pbxes):
        raise LinkNotFound(link_id)
    return link


def shown_message(message: str) -> str:
    """A stored message as it may be shown: URLs redacted, control codes escaped."""
    from pbxcal.core.redact import printable, redact_url

    return printable(_URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), message))

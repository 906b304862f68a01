"""Why an appointment was ignored, in plain words for the customer (English and Dutch).

What it does: ``explain(title, reason, policy, translations)`` turns a core ``Reason``
code (``pbxcal.core.targets.Reason``) and the appointment's title into one sentence:
"'Lunch' is not a phone number", "0900 numbers are premium rate and blocked". For
``blocked-by-policy`` it looks at the number again with the same ``NumberPolicy`` to
say *which* rule blocked it (emergency, a short service number, another country,
premium rate, another kind of number). The English sentences are the gettext msgids;
the Dutch ones live in the portal's catalog like every other word on the pages.

What it must not do: decide anything (the core decided; this only words it) or put a
title into HTML unescaped (the templates escape what this returns).

Start at ``explain``.
"""

from __future__ import annotations

import gettext
import re

import phonenumbers
from babel import Locale

from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason

_SEPARATORS = re.compile(r"[ ()\-./]")


def _(message: str) -> str:
    """Marks a msgid for extraction; the translation happens in ``explain``."""
    return message


#: One sentence per reason (and per policy rule for ``blocked-by-policy``).
MESSAGES: dict[str, str] = {
    Reason.NOT_A_NUMBER: _("'%(title)s' is not a phone number"),
    Reason.INVALID_NUMBER: _("'%(title)s' is not a valid phone number"),
    Reason.TOO_MANY_TARGETS: _("Too many forwardings at the same time: '%(title)s' was left out"),
    Reason.UNKNOWN_EXTENSION: _("%(title)s is not an extension on this phone system"),
    Reason.BLOCKED_BY_POLICY: _("'%(title)s' is blocked by the phone system's number rules"),
    "emergency": _("%(number)s reaches the emergency services and is never forwarded to"),
    "short": _("%(number)s is a short service number and blocked"),
    "premium": _("%(prefix)s numbers are premium rate and blocked"),
    "shared-cost": _("%(prefix)s numbers cost the caller extra and are blocked"),
    "country": _("Numbers in %(country)s are not allowed on this phone system"),
    "kind": _("%(number)s is a kind of number this phone system does not forward to"),
}
#: For reasons pbxcal does not know yet (a newer core): still a sentence, never a code.
UNKNOWN = _("'%(title)s' was ignored")


def explain(
    title: str, reason: str, policy: NumberPolicy, translations: gettext.NullTranslations,
    language: str = "en",
) -> str:  # fmt: skip
    """The sentence for an ignored appointment ``title`` with core reason ``reason``."""
    key, values = _which(title, reason, policy)
    values.setdefault("title", title.strip())
    if key == "country":
        region = values.get("country", "")
        names = Locale.parse(language).territories
        values["country"] = names.get(region, region)
    template = MESSAGES.get(key, UNKNOWN)
    return translations.gettext(template) % values


def _which(title: str, reason: str, policy: NumberPolicy) -> tuple[str, dict[str, str]]:
    if reason != Reason.BLOCKED_BY_POLICY:
        return reason, {}
    digits = _SEPARATORS.sub("", title.strip())
    bare = digits.lstrip("+")
    if policy.is_emergency(bare) or (
        not digits.startswith(("+", "0")) and policy.connects_to_emergency(digits)
    ):
        return "emergency", {"number": digits}
    if not digits.startswith("+") and policy.short_number(digits) is not None:
        return "short", {"number": digits}
    try:
        number = phonenumbers.parse(digits, policy.region)
    except phonenumbers.NumberParseException:
        return reason, {}
    region = phonenumbers.region_code_for_number(number)
    if not policy.allows_country(region):
        return "country", {"country": region or "?"}
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    prefix = national.split(" ")[0]
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        return "premium", {"prefix": prefix}
    if kind == phonenumbers.PhoneNumberType.SHARED_COST:
        return "shared-cost", {"prefix": prefix}
    return "kind", {"number": title.strip()}

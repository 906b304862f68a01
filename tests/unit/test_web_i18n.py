"""The portal's languages: the catalog is complete and current, the language choice, and
every ignored-appointment reason in plain English and Dutch.

Refreshing the catalog after changing a text (the test ``test_the_template_is_current``
fails until then)::

    .venv/bin/pybabel extract -F pbxcal/web/locale/babel.cfg -k _ --no-location \\
        --sort-output --project pbxcal --copyright-holder pbxcal \\
        -o pbxcal/web/locale/pbxcal.pot .
    .venv/bin/pybabel update -i pbxcal/web/locale/pbxcal.pot -d pbxcal/web/locale \\
        -D pbxcal -l nl --no-fuzzy-matching
    # then translate the new empty msgstr lines in locale/nl/LC_MESSAGES/pbxcal.po
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason
from pbxcal.web.cookies import PortalSession
from pbxcal.web.i18n import LOCALE_DIR, Templates, accepted_languages, pick_language
from pbxcal.web.portal.reasons import MESSAGES, explain

ROOT = Path(__file__).resolve().parents[2]
POT = LOCALE_DIR / "pbxcal.pot"
NL_PO = LOCALE_DIR / "nl" / "LC_MESSAGES" / "pbxcal.po"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def extracted_msgids() -> set[str]:
    method_map = [("pbxcal/web/**.py", "python"), ("pbxcal/web/templates/**.html", "jinja2")]
    options = {"pbxcal/web/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map, options, keywords={"_": None, "gettext": None}
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_the_template_is_current() -> None:
    with POT.open("rb") as source:
        template = {m.id for m in read_po(source) if m.id}
    assert extracted_msgids() == template


def test_every_message_has_a_dutch_translation_with_the_same_placeholders() -> None:
    with POT.open("rb") as source:
        template = {m.id for m in read_po(source) if m.id}
    with NL_PO.open("rb") as source:
        dutch = {m.id: m.string for m in read_po(source, locale="nl") if m.id}
    assert set(dutch) >= template
    for msgid in template:
        translation = dutch[msgid]
        assert translation, f"no Dutch for {msgid!r}"
        assert isinstance(msgid, str) and isinstance(translation, str)
        assert sorted(PLACEHOLDER.findall(translation)) == sorted(PLACEHOLDER.findall(msgid))


@pytest.mark.parametrize(
    ("query", "cookie", "header", "expected"),
    [
        (None, None, None, "en"),
        (None, None, "nl-NL,nl;q=0.9,en;q=0.8", "nl"),
        (None, None, "de-DE,de;q=0.9,nl;q=0.5", "nl"),
        (None, None, "nl;q=0.2,en;q=0.9", "en"),
        (None, None, "nl;q=0", "en"),
        (None, None, "fr, *;q=0.1", "en"),
        ("nl", None, "en", "nl"),
        ("xx", None, "nl", "nl"),
        (None, "nl", "en", "nl"),
        ("en", "nl", "nl", "en"),
        (None, "../../etc", "garbage;;q=x", "en"),
    ],
)
def test_the_language_is_query_then_cookie_then_accept_language(
    query: str | None, cookie: str | None, header: str | None, expected: str
) -> None:
    assert pick_language(query, cookie, header, ("en", "nl")) == expected


def test_only_configured_languages_are_offered() -> None:
    assert pick_language("nl", None, "nl", ("en",)) == "en"
    assert accepted_languages("en;q=0.5, nl, de;q=0") == ["nl", "en"]


POLICY = NumberPolicy.default("NL")


@pytest.mark.parametrize(
    ("title", "reason", "english", "dutch"),
    [
        ("Lunch", Reason.NOT_A_NUMBER, "'Lunch' is not a phone number",
         "'Lunch' is geen telefoonnummer"),
        ("06 123", Reason.INVALID_NUMBER, "'06 123' is not a valid phone number",
         "'06 123' is geen geldig telefoonnummer"),
        ("0900 1234567", Reason.BLOCKED_BY_POLICY, "0900 numbers are premium rate and blocked",
         "0900-nummers zijn betaalnummers en worden geblokkeerd"),
        ("112", Reason.BLOCKED_BY_POLICY,
         "112 reaches the emergency services and is never forwarded to",
         "112 bereikt de hulpdiensten; daarheen wordt nooit doorgeschakeld"),
        ("+49 30 1234567", Reason.BLOCKED_BY_POLICY,
         "Numbers in Germany are not allowed on this phone system",
         "Nummers in Duitsland zijn niet toegestaan op deze telefooncentrale"),
        ("333", Reason.UNKNOWN_EXTENSION, "333 is not an extension on this phone system",
         "333 is geen toestel op deze telefooncentrale"),
        ("201", Reason.TOO_MANY_TARGETS,
         "Too many forwardings at the same time: '201' was left out",
         "Te veel doorschakelingen tegelijk: '201' is weggelaten"),
    ],
)  # fmt: skip
def test_every_reason_is_a_sentence_in_both_languages(
    title: str, reason: Reason, english: str, dutch: str
) -> None:
    templates = Templates(("en", "nl"))
    assert explain(title, reason, POLICY, templates.gettext("en"), "en") == english
    assert explain(title, reason, POLICY, templates.gettext("nl"), "nl") == dutch


def test_every_core_reason_has_its_own_words() -> None:
    assert set(Reason) <= set(MESSAGES)
    nl = Templates(("en", "nl")).gettext("nl")
    for key, english in MESSAGES.items():
        assert nl.gettext(english) != english, key


def test_values_are_escaped_on_the_page() -> None:
    session = PortalSession(1, "h" * 64, "main", "<script>1</script>", 0.0)
    page = Templates(("en",)).render_text(
        "en",
        "choose.html",
        {"lang": "en", "languages": [], "path": "/", "session": session, "csrf": "",
         "google": False, "microsoft": False, "unlinked": False},
    )  # fmt: skip
    assert "<script>" not in page
    assert "Extension &lt;script&gt;1&lt;/script&gt;" in page

"""Templates in the customer's language: Jinja2 with autoescape and gettext catalogs.

What it does: ``Templates`` loads ``pbxcal/web/templates`` once per language into its
own Jinja2 environment (autoescape on, ``jinja2.ext.i18n`` with new-style gettext, so
``{% trans %}`` and ``_("...")`` both read the catalog), and ``render(request, name,
**values)`` answers with the page in the language ``pick_language`` chose:
``?lang=xx`` when it names a configured language (remembered in the ``pbxcal_lang``
cookie), else that cookie, else the best match of ``Accept-Language``, else English.
English is the source language (the msgids); Dutch comes from
``locale/nl/LC_MESSAGES/pbxcal.po``, compiled in memory with Babel when this module
loads (so no compiled ``.mo`` file sits in the repository or needs a build step; the
catalog is small and this takes milliseconds). ``locale/pbxcal.pot`` is the template
made from the templates and Python sources (``scripts`` in the module docstring of
``tests/unit/test_web_i18n.py`` says how to refresh it).

What it must not do: build HTML by string concatenation (templates only, autoescaped),
or let ``?lang=`` pick anything but a configured language.

Start at ``Templates.render``.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from babel import Locale
from babel.messages import mofile, pofile

WEB_DIR = Path(__file__).parent
TEMPLATE_DIR = WEB_DIR / "templates"
LOCALE_DIR = WEB_DIR / "locale"
DOMAIN = "pbxcal"
SOURCE_LANGUAGE = "en"
LANGUAGE_COOKIE = "pbxcal_lang"
LANGUAGE_NAMES = {"en": "English", "nl": "Nederlands"}


def load_translations(language: str) -> gettext.NullTranslations:
    """The catalog of ``language`` compiled from its ``.po`` (English: the msgids)."""
    if language == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as source:
        catalog = pofile.read_po(source, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    mofile.write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def pick_language(
    query: str | None, cookie: str | None, accept_language: str | None, offered: Iterable[str]
) -> str:
    """The page language: ``?lang=``, the remembered choice, Accept-Language, English."""
    languages = list(offered) or [SOURCE_LANGUAGE]
    for explicit in (query, cookie):
        if explicit in languages:
            return explicit
    for wanted in accepted_languages(accept_language or ""):
        primary = wanted.split("-")[0]
        if primary in languages:
            return primary
        if wanted == "*":
            break
    return SOURCE_LANGUAGE if SOURCE_LANGUAGE in languages else languages[0]


def accepted_languages(header: str) -> list[str]:
    """The language ranges of an Accept-Language header, best first (q=0 dropped)."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip().lower()
        if not tag:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]


class Templates:
    """One Jinja2 environment per language; see the module docstring."""

    def __init__(
        self, languages: Iterable[str] = ("en", "nl"), *, secure_cookies: bool = True
    ) -> None:
        self.secure_cookies = secure_cookies
        self.languages = tuple(dict.fromkeys([*languages])) or (SOURCE_LANGUAGE,)
        self._environments: dict[str, jinja2.Environment] = {}
        self._translations: dict[str, gettext.NullTranslations] = {}
        for language in {*self.languages, SOURCE_LANGUAGE}:
            environment = jinja2.Environment(
                loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                autoescape=True,
                extensions=["jinja2.ext.i18n"],
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            translations = load_translations(language)
            environment.install_gettext_translations(  # type: ignore[attr-defined]
                translations, newstyle=True
            )
            self._environments[language] = environment
            self._translations[language] = translations

    def gettext(self, language: str) -> gettext.NullTranslations:
        """The catalog of ``language`` (for words made in Python, e.g. reasons)."""
        return self._translations.get(language, self._translations[SOURCE_LANGUAGE])

    def language(self, request: web.Request) -> str:
        return pick_language(
            request.query.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("Accept-Language"),
            self.languages,
        )

    def render_text(self, language: str, name: str, values: Mapping[str, Any]) -> str:
        environment = self._environments.get(language, self._environments[SOURCE_LANGUAGE])
        return environment.get_template(name).render(values)

    def render(
        self, request: web.Request, name: str, *, status: int = 200, **values: Any
    ) -> web.Response:
        """``name`` rendered in the request's language as an HTML answer."""
        language = self.language(request)
        page = self.render_text(
            language,
            name,
            {
                "lang": language,
                "languages": [(code, LANGUAGE_NAMES.get(code, code)) for code in self.languages],
                "path": request.path,
                "locale": Locale.parse(language),
                **values,
            },
        )
        response = web.Response(text=page, status=status, content_type="text/html")
        chosen = request.query.get("lang")
        if chosen in self.languages and chosen != request.cookies.get(LANGUAGE_COOKIE):
            response.set_cookie(
                LANGUAGE_COOKIE, chosen, max_age=365 * 86400, path="/",
                secure=self.secure_cookies, httponly=True, samesite="Lax",
            )  # fmt: skip
        return response

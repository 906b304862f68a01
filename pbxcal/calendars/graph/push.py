"""Graph change notifications: the validation handshake and checking what arrives.

A subscription (``GraphSubscription``) is made by ``GraphCalendarSource.subscribe``.
Before Graph answers, it POSTs to the notification URL and to the lifecycle URL with a
``validationToken`` query parameter; the webhook must answer 200, ``text/plain``, the
token as the body, within 10 seconds (``validation_token(query)`` says whether a request
is such a handshake and what to echo). Afterwards Graph POSTs JSON ``{"value": [...]}``
notifications; every item carries ``subscriptionId`` and our ``clientState``. The
webhook answers 202 at once (Graph drops slow endpoints) and acts outside the request:

* ``changed`` (created/updated/deleted) and ``missed`` → an incremental sync of that
  link (a notification says only *that* something changed: the delta says what);
* ``reauthorizationRequired`` → ``source.renew(subscription, new_expiry)``;
* ``subscriptionRemoved`` → ``source.subscribe(...)`` again, then a sync.

``SubscriptionBook`` (one per process) knows the live subscriptions: ``add``, ``remove``,
``learn`` (one another process made, read from the store by ``pbxcal.service.push``),
``check(body)`` → one ``Accepted(link, kind, subscription_id)`` or ``Refused(reason)``
per item (unknown subscription, wrong ``clientState`` compared in constant time,
malformed). ``refused`` counts reasons for a metric. Notifications are not 100 %
reliable: the polling backstop runs anyway. Graph notifications carry no sequence
number, so there is no replay check beyond ``clientState``.

Must not do: trust a notification beyond these checks, log a ``clientState``, or sync
inside the webhook request. Start reading at ``SubscriptionBook.check``.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pbxcal.calendars.google.push import token_digest
from pbxcal.calendars.graph.source import GraphSubscription

L = TypeVar("L")

#: Graph's validation tokens are short; anything longer is not a handshake.
_MAX_TOKEN = 1024
_LIFECYCLE = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})


def validation_token(query: Mapping[str, str]) -> str | None:
    """The text to echo (200 ``text/plain``) when this request is Graph's validation
    handshake, else ``None``."""
    token = query.get("validationToken")
    if token is None or len(token) > _MAX_TOKEN or not token.isprintable():
        return None
    return token


@dataclass(frozen=True)
class Accepted(Generic[L]):
    """A genuine notification for ``link``: ``kind`` is ``"changed"``, ``"missed"``,
    ``"reauthorizationRequired"`` or ``"subscriptionRemoved"``."""

    link: L
    kind: str
    subscription_id: str


@dataclass(frozen=True)
class Refused:
    reason: str


class SubscriptionBook(Generic[L]):
    """The subscriptions this process knows and the link each belongs to.

    Own subscriptions (``add``: kept until ``remove``) and ones learned from the store
    (``learn``: made by another process; ``fresh`` for ``max_age`` seconds). Each is
    checked against a digest of its ``clientState`` (``token_digest``).
    """

    def __init__(self) -> None:
        self._live: dict[str, tuple[GraphSubscription, L]] = {}
        #: subscription id -> (clientState digest, link, learned at (monotonic) or None)
        self._entries: dict[str, tuple[bytes, L, float | None]] = {}
        self.refused: Counter[str] = Counter()

    def add(self, subscription: GraphSubscription, link: L, *, digest: bytes | None = None) -> None:
        """An own subscription; ``digest`` when its client state is known only as one
        (taken over from another process)."""
        self._live[subscription.id] = (subscription, link)
        state = digest if digest is not None else token_digest(subscription.client_state)
        self._entries[subscription.id] = (state, link, None)

    def learn(self, subscription_id: str, digest: bytes, link: L, at: float) -> None:
        """A subscription read from the store at ``at`` (monotonic); own ones stay own."""
        known = self._entries.get(subscription_id)
        if known is None or known[2] is not None:
            self._entries[subscription_id] = (digest, link, at)

    def fresh(self, subscription_id: str, now: float, max_age: float) -> bool:
        known = self._entries.get(subscription_id)
        return known is not None and (known[2] is None or now - known[2] < max_age)

    def remove(self, subscription_id: str) -> None:
        self._live.pop(subscription_id, None)
        self._entries.pop(subscription_id, None)

    def get(self, subscription_id: str) -> GraphSubscription | None:
        entry = self._live.get(subscription_id)
        return entry[0] if entry else None

    @staticmethod
    def subscription_ids(body: bytes) -> set[str]:
        """The subscription ids a notification POST names (for looking them up first);
        empty for anything that is not Graph's shape."""
        try:
            items = json.loads(body)["value"]
        except (ValueError, TypeError, KeyError):
            return set()
        if not isinstance(items, list):
            return set()
        return {
            item["subscriptionId"] for item in items
            if isinstance(item, dict) and isinstance(item.get("subscriptionId"), str)
        }

    def check(self, body: bytes) -> list[Accepted[L] | Refused]:
        """Each item of a notification POST, checked. A body that is not Graph's
        shape gives one ``Refused``."""
        try:
            data = json.loads(body)
            items = data["value"]
        except (ValueError, TypeError, KeyError):
            return [self._refuse("malformed")]
        if not isinstance(items, list) or not items:
            return [self._refuse("malformed")]
        return [self._check_one(item) for item in items]

    def _check_one(self, item: Any) -> Accepted[L] | Refused:
        if not isinstance(item, dict):
            return self._refuse("malformed")
        subscription_id = item.get("subscriptionId")
        state = item.get("clientState")
        if not isinstance(subscription_id, str) or not isinstance(state, str):
            return self._refuse("malformed")
        entry = self._entries.get(subscription_id)
        if entry is None:
            return self._refuse("unknown subscription")
        digest, link, _ = entry
        if not hmac.compare_digest(token_digest(state), digest):
            return self._refuse("wrong clientState")
        event = item.get("lifecycleEvent")
        if event is not None:
            if event not in _LIFECYCLE:
                return self._refuse("unknown lifecycle event")
            return Accepted(link, str(event), subscription_id)
        return Accepted(link, "changed", subscription_id)

    def _refuse(self, reason: str) -> Refused:
        self.refused[reason] += 1
        return Refused(reason)

"""``pbxcal.admin``: tokens, invitations and the link operations shared by the CLI, the
admin API and the portal, against a real SQLite store (no HTTP server; Google's
revocation endpoint is an ``httpx.MockTransport`` that records what it was sent)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pbxcal.admin import operations
from pbxcal.admin.invitations import (
    InvitationRefused,
    create_invitation,
    invitation_record,
    open_invitation,
)
from pbxcal.admin.operations import LinkNotFound
from pbxcal.admin.tokens import authenticate, create_admin_token, hash_token, in_scope
from pbxcal.calendars.providers import SECRET_CALDAV_PASSWORD, SECRET_GOOGLE
from pbxcal.config import Config, PbxConfig, PortalConfig, PortalGoogle
from pbxcal.errors import InputError
from pbxcal.store import KeyRing, Store, StoredEvent, SyncState
from pbxcal.store.secrets import new_key

NOW = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
REVOKE_URI = "https://oauth2.example.test/revoke"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/state.db", keys=KeyRing([new_key()]))
    yield opened
    opened.close()


@pytest.fixture
def config() -> Config:
    return Config(
        pbxes={
            "main": PbxConfig("main", extensions=frozenset({"101", "102", "333"})),
            "branch": PbxConfig("branch"),
        },
        portal=PortalConfig(
            public_url="https://pbx.example.com/",
            google=PortalGoogle(client_file="/dev/null", revoke_uri=REVOKE_URI),
        ),
    )


def vevent(uid: str, title: str, start: datetime, hours: float) -> StoredEvent:
    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y%m%dT%H%M%SZ")

    end = start + timedelta(hours=hours)
    text = (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{stamp(NOW)}\r\nDTSTART:{stamp(start)}\r\n"
        f"DTEND:{stamp(end)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\n"
    )
    return StoredEvent(uid, None, text)


# -- tokens ------------------------------------------------------------------------------


def test_admin_token_is_stored_as_its_hash_only(store: Store) -> None:
    record, token = create_admin_token(store, "ops", None, ["main"])
    assert token.startswith("pbxcal_") and len(token) >= 40
    with store._db.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM admin_tokens"))
    assert token not in dump and hash_token(token) in dump
    assert authenticate(store, token, NOW) == record.__class__(
        record.id, "ops", None, record.created_at, None, None
    )


def test_authenticate_refuses_wrong_and_revoked_tokens(store: Store) -> None:
    _, token = create_admin_token(store, "ops", None, ["main"])
    assert authenticate(store, token[:-1] + ("A" if token[-1] != "A" else "B"), NOW) is None
    assert authenticate(store, token.removeprefix("pbxcal_"), NOW) is None
    assert authenticate(store, "", NOW) is None
    assert authenticate(store, token, NOW) is not None
    store.revoke_admin_token("ops")
    assert authenticate(store, token, NOW) is None


def test_authenticate_notes_the_last_use_at_most_once_a_minute(store: Store) -> None:
    _, token = create_admin_token(store, "ops", None, ["main"])
    authenticate(store, token, NOW)
    authenticate(store, token, NOW + timedelta(seconds=30))
    assert store.list_admin_tokens()[0].last_used_at == NOW
    authenticate(store, token, NOW + timedelta(minutes=2))
    assert store.list_admin_tokens()[0].last_used_at == NOW + timedelta(minutes=2)


def test_token_scope(store: Store) -> None:
    everyone, _ = create_admin_token(store, "ops", None, ["main", "branch"])
    reseller, _ = create_admin_token(store, "reseller", ["branch"], ["main", "branch"])
    assert in_scope(everyone, "main") and in_scope(everyone, "branch")
    assert in_scope(reseller, "branch") and not in_scope(reseller, "main")


@pytest.mark.parametrize(
    ("name", "pbxes", "message"),
    [
        ("bad name", None, "--name"),
        ("", None, "--name"),
        ("ok", ["nowhere"], "not a configured PBX"),
        ("ok", [], "at least one --pbx"),
    ],
)
def test_token_creation_refusals(
    store: Store, name: str, pbxes: list[str] | None, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        create_admin_token(store, name, pbxes, ["main"])
    assert store.list_admin_tokens() == []


# -- invitations -------------------------------------------------------------------------


def test_create_and_open_an_invitation(store: Store, config: Config) -> None:
    invitation, url = create_invitation(
        store, config, "main", "101", email="anna@example.com", created_by="cli:root"
    )
    prefix = "https://pbx.example.com/i/"
    assert url.startswith(prefix)
    token = url.removeprefix(prefix)
    assert len(token) >= 43
    assert store.invitation_by_hash(hash_token(token)) == invitation
    hours = (invitation.expires_at - invitation.created_at).total_seconds() / 3600
    assert hours == pytest.approx(72, abs=0.01)
    assert open_invitation(store, token, datetime.now(UTC)) == invitation
    record = invitation_record(invitation, datetime.now(UTC))
    assert record["state"] == "open" and token not in str(record)


def test_open_invitation_refusals(store: Store, config: Config) -> None:
    invitation, url = create_invitation(store, config, "main", "101", created_by="t")
    token = url.rsplit("/", 1)[1]
    for bad in ("", "nope", token + "x", "x" * 500):
        with pytest.raises(InvitationRefused) as refused:
            open_invitation(store, bad, NOW)
        assert refused.value.reason == "unknown"
    with pytest.raises(InvitationRefused) as refused:
        open_invitation(store, token, invitation.expires_at)
    assert refused.value.reason == "expired"
    link = store.add_link("101", "main", "ics", "/tmp/x.ics")
    assert store.use_invitation(invitation.id, link.id)
    with pytest.raises(InvitationRefused) as refused:
        open_invitation(store, token, datetime.now(UTC))
    assert refused.value.reason == "used"


@pytest.mark.parametrize(
    ("pbx", "extension", "email", "message"),
    [
        ("nowhere", "101", None, "not a configured PBX"),
        ("main", "0101", None, "is not an extension"),
        ("main", "105", None, "not one of"),
        ("main", "101", "not-an-address", "not an e-mail address"),
    ],
)
def test_invitation_refusals_store_nothing(
    store: Store, config: Config, pbx: str, extension: str, email: str | None, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        create_invitation(store, config, pbx, extension, email=email, created_by="t")
    assert store.list_invitations() == []


def test_no_invitations_without_the_portal(store: Store) -> None:
    config = Config(pbxes={"main": PbxConfig("main")})
    with pytest.raises(InputError, match=r"\[portal\] public_url"):
        create_invitation(store, config, "main", "101", created_by="t")


# -- adding a checked link ---------------------------------------------------------------


def test_add_checked_link_reads_once_then_switches_on(
    store: Store, config: Config, tmp_path: Path
) -> None:
    calendar = tmp_path / "cal.ics"
    calendar.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n"
        + vevent("a", "0612345678", NOW, 1).ical
        + "END:VCALENDAR\r\n"
    )
    link = operations.add_checked_link(
        store, config, pbx="main", extension="101", provider="ics", source=str(calendar),
        settings={"account": "anna@example.com"}, secret_kind=None, secret=None,
    )  # fmt: skip
    assert link.active and store.get_link(link.id) == link


def test_add_checked_link_leaves_nothing_when_the_read_fails(
    store: Store, config: Config, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="the calendar cannot be read"):
        operations.add_checked_link(
            store, config, pbx="main", extension="101", provider="ics",
            source=str(tmp_path / "missing.ics"), settings={}, secret_kind=None, secret=None,
        )  # fmt: skip
    assert store.list_links() == []


def test_add_checked_link_refuses_a_bad_target_before_storing(store: Store, config: Config) -> None:
    with pytest.raises(InputError, match="not a configured PBX"):
        operations.add_checked_link(
            store, config, pbx="other", extension="101", provider="caldav",
            source="https://dav.example/", settings={}, secret_kind=SECRET_CALDAV_PASSWORD,
            secret=b"pw",
        )  # fmt: skip
    assert store.list_links() == []


# -- looking -----------------------------------------------------------------------------


def linked_calendar(store: Store) -> int:
    link = store.add_link("101", "main", "google", "primary", {"account": "anna@example.com"})
    events = [
        vevent("running", "333", NOW - timedelta(hours=1), 2),
        vevent("call", "06 1234 5678", NOW + timedelta(days=1), 1),
        vevent("lunch", "Lunch", NOW + timedelta(days=2), 1),
        vevent("premium", "0900 1234567", NOW + timedelta(days=3), 1),
        vevent("past", "0612345678", NOW - timedelta(days=2), 1),
        vevent("later", "0612345678", NOW + timedelta(days=9), 1),
    ]
    state = SyncState(None, None, None, None, "", NOW)
    store.replace_events(link.id, events, state)
    store.log_sync(link.id, NOW - timedelta(minutes=10), "changed", 3, {"not-a-number": 1})
    store.log_sync(link.id, NOW - timedelta(minutes=5), "unavailable", 0, {}, "timed out")
    return link.id


def test_link_overview_as_pbxcal_plan_sees_it(store: Store, config: Config) -> None:
    link_id = linked_calendar(store)
    overview = operations.link_overview(store, config, link_id, NOW)
    assert overview.status == "unreachable"
    assert overview.last_sync == NOW - timedelta(minutes=10)
    assert overview.last_error == "timed out"
    assert overview.account == "anna@example.com"
    assert [(f.start, f.end, f.targets) for f in overview.upcoming] == [
        (NOW - timedelta(hours=1), NOW + timedelta(hours=1), ("333",)),
        (NOW + timedelta(days=1), NOW + timedelta(days=1, hours=1), ("+31612345678",)),
    ]
    assert [(i.title, i.start, i.reason) for i in overview.ignored] == [
        ("Lunch", NOW + timedelta(days=2), "not-a-number"),
        ("0900 1234567", NOW + timedelta(days=3), "blocked-by-policy"),
    ]
    assert all(i.detail for i in overview.ignored)


def test_link_overview_scope_hides_other_pbxes(store: Store, config: Config) -> None:
    link_id = linked_calendar(store)
    with pytest.raises(LinkNotFound) as hidden:
        operations.link_overview(store, config, link_id, NOW, pbxes=("branch",))
    with pytest.raises(LinkNotFound) as missing:
        operations.link_overview(store, config, 999, NOW, pbxes=("branch",))
    assert str(hidden.value) == f"no link {link_id}" and str(missing.value) == "no link 999"


def test_link_overviews_use_the_saved_expansions(store: Store, config: Config) -> None:
    from pbxcal.core.ical import EventInstance
    from pbxcal.store import ExpansionRecord

    link_id = linked_calendar(store)
    other = store.add_link("200", "branch", "ics", "/tmp/b.ics").id
    instance = EventInstance(
        uid="x", title="0612345678", start=NOW + timedelta(hours=3),
        end=NOW + timedelta(hours=4), all_day=False, transparent=False,
    )  # fmt: skip
    record = ExpansionRecord(NOW - timedelta(days=1), NOW + timedelta(days=14), (instance,), NOW)
    store.save_expansion(link_id, record)
    found = operations.link_overviews(store, config, NOW)
    assert [o.link.id for o in found] == [link_id, other]
    first = found[0]
    assert [f.targets for f in first.upcoming] == [("+31612345678",)]
    assert first.status == "unreachable" and first.last_sync == NOW - timedelta(minutes=10)
    assert found[1].status == "pending" and found[1].upcoming == []
    assert [o.link.id for o in operations.link_overviews(store, config, NOW, pbxes=["branch"])] == [
        other
    ]


def test_sync_log_redacts_urls(store: Store, config: Config) -> None:
    link = store.add_link("101", "main", "ics", "https://cal.example/secret-token/cal.ics")
    store.log_sync(link.id, NOW, "invalid", 0, {},
                   "https://user:pw@cal.example/path?token=abc answered 500")  # fmt: skip
    [entry] = operations.sync_log(store, link.id, 5)
    assert "pw" not in entry.message and "token=abc" not in entry.message
    with pytest.raises(LinkNotFound):
        operations.sync_log(store, link.id, 5, pbxes=["branch"])


def test_enable_disable_and_request_sync(store: Store, config: Config) -> None:
    link = store.add_link("101", "main", "ics", "/tmp/a.ics")
    assert operations.set_link_active(store, link.id, False).active is False
    assert operations.request_sync(store, None, link.id) is False
    with pytest.raises(LinkNotFound):
        operations.set_link_active(store, link.id, True, pbxes=["branch"])
    assert store.get_link(link.id).active is False  # type: ignore[union-attr]


# -- removing ----------------------------------------------------------------------------


def google_link(store: Store) -> int:
    link = store.add_link("101", "main", "google", "primary", {"auth": "user"})
    grant = b'{"refresh_token": "1//refresh-me", "client_id": "c", "client_secret": "s"}'
    store.save_secret(link.id, SECRET_GOOGLE, grant)
    return link.id


def test_remove_link_revokes_the_google_grant_first(store: Store, config: Config) -> None:
    link_id = google_link(store)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    removal = operations.remove_link(store, config, link_id, transport=httpx.MockTransport(answer))
    assert removal.revoked is True
    assert [(str(r.url), r.content) for r in seen] == [(REVOKE_URI, b"token=1%2F%2Frefresh-me")]
    assert store.get_link(link_id) is None


def test_remove_link_removes_even_when_google_fails(store: Store, config: Config) -> None:
    link_id = google_link(store)
    removal = operations.remove_link(
        store, config, link_id, transport=httpx.MockTransport(lambda _: httpx.Response(503))
    )
    assert removal.revoked is False and "not revoked at Google" in removal.note
    assert "refresh-me" not in removal.note
    assert store.get_link(link_id) is None


def test_remove_link_out_of_scope_changes_nothing(store: Store, config: Config) -> None:
    link_id = google_link(store)
    with pytest.raises(LinkNotFound):
        operations.remove_link(store, config, link_id, pbxes=["branch"])
    assert store.get_link(link_id) is not None
    assert store.load_secret(link_id, SECRET_GOOGLE) is not None


def test_remove_microsoft_link_says_there_is_no_revocation(store: Store, config: Config) -> None:
    link = store.add_link("101", "main", "graph", "me", {"auth": "delegated"})
    removal = operations.remove_link(store, config, link.id)
    assert removal.revoked is False and "myapps.microsoft.com" in removal.note


def test_remove_link_can_reopen_its_invitation(store: Store, config: Config) -> None:
    invitation, url = create_invitation(store, config, "main", "101", created_by="t")
    link = store.add_link("101", "main", "ics", "/tmp/a.ics")
    assert store.use_invitation(invitation.id, link.id)
    operations.remove_link(store, config, link.id, reopen_invitation=True)
    assert open_invitation(store, url.rsplit("/", 1)[1], datetime.now(UTC)).id == invitation.id


def test_a_grant_of_another_issuer_is_never_sent_to_google(store: Store) -> None:
    config = Config(pbxes={"main": PbxConfig("main")})  # no [portal.google]: Google's URI
    link = store.add_link("101", "main", "google", "primary", {"auth": "user"})
    grant = b'{"refresh_token": "r", "token_uri": "https://127.0.0.1:9/token"}'
    store.save_secret(link.id, SECRET_GOOGLE, grant)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    removal = operations.remove_link(store, config, link.id, transport=httpx.MockTransport(answer))
    assert seen == [] and removal.revoked is False and "not issued by Google" in removal.note
    assert store.get_link(link.id) is None

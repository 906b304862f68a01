"""The store's contract, backend-independent: every test here runs on SQLite (this module)
and again on a real PostgreSQL (``tests/integration/test_store_postgres.py`` imports these
tests and overrides the ``store_url`` fixture). SQLite-only behaviour (pragmas, paths) is
in ``test_store_sqlite.py``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import pbxcal.store.events as store_events
from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.core.ical import EventInstance
from pbxcal.store import (
    SYNC_LOG_KEEP,
    AppliedStore,
    ExpansionRecord,
    Link,
    LinkAdminStore,
    LinkWatchStore,
    SchemaTooNew,
    StateStore,
    Store,
    StoredEvent,
    StoreError,
    SyncState,
    SyncStore,
    migrate,
)
from pbxcal.store.schema import metadata

T0 = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


def state(etag: str | None = "e1", at: datetime = T0, **changes: Any) -> SyncState:
    values: dict[str, Any] = {
        "etag": etag,
        "last_modified": "Mon, 30 Mar 2026 07:00:00 GMT",
        "sync_token": None,
        "calendar_tz": "Europe/Amsterdam",
        "timezones": "BEGIN:VTIMEZONE\r\nTZID:Europe/Amsterdam\r\nEND:VTIMEZONE\r\n",
        "fetched_at": at,
    }
    values.update(changes)
    return SyncState(**values)


def vevent(uid: str, summary: str = "0612345678", rid: str | None = None) -> StoredEvent:
    lines = ["BEGIN:VEVENT", f"UID:{uid}", f"SUMMARY:{summary}"]
    if rid:
        lines.append(f"RECURRENCE-ID:{rid}")
    lines.append("END:VEVENT")
    return StoredEvent(uid=uid, recurrence_id=rid, ical="\r\n".join(lines) + "\r\n")


def revision(store: Store) -> str | None:
    with store._db.engine.connect() as conn:
        return migrate.current_revision(conn)


def table_dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, straight from the database (not through the store)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            reflected = sa.MetaData()
            reflected.reflect(conn)
            return {
                name: sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
                for name, table in sorted(reflected.tables.items())
            }
    finally:
        engine.dispose()


# -- opening, schema ---------------------------------------------------------------------


def test_open_migrates_to_head(store: Store) -> None:
    assert revision(store) == migrate.head_revision() == "0009"


def test_migrations_build_exactly_the_declared_schema(store: Store, store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_migrations_downgrade_and_upgrade_again(store: Store, store_url: str) -> None:
    store.close()
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            config = migrate.alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()
    with Store.open(store_url) as again:
        assert revision(again) == migrate.head_revision()
        assert again.list_links() == []


def test_reopen_keeps_data(store: Store, store_url: str) -> None:
    link = store.add_link("100", "main", "ics", "https://example.test/a.ics", {"k": "v"})
    store.close()
    with Store.open(store_url) as again:
        assert again.list_links() == [link]
        assert revision(again) == migrate.head_revision()


def test_schema_too_new_is_refused_and_nothing_changes(store: Store, store_url: str) -> None:
    store.add_link("100", "main", "ics", "https://example.test/a.ics")
    store.close()
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    finally:
        engine.dispose()
    before = table_dump(store_url)

    with pytest.raises(SchemaTooNew) as info:
        Store.open(store_url)

    assert str(info.value) == (
        f"database schema 0099_future is newer than this pbxcal ({migrate.head_revision()}); "
        "upgrade pbxcal or restore a backup"
    )
    assert table_dump(store_url) == before


def test_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.list_links()


# -- links -------------------------------------------------------------------------------


def test_add_and_get_link(store: Store) -> None:
    settings = {"calendar_id": "primary", "nested": {"a": [1, 2]}, "flag": True}
    link = store.add_link("100", "main", "google", "agent@example.test", settings)

    assert link.id > 0
    assert (link.extension, link.pbx, link.provider, link.source) == (
        "100",
        "main",
        "google",
        "agent@example.test",
    )
    assert link.settings == settings
    assert link.active is True
    assert link.origin == "cli"
    assert link.created_at.tzinfo is UTC
    assert abs(link.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert store.get_link(link.id) == link
    assert store.get_link(link.id + 1000) is None


def test_add_link_twice_names_the_existing_link(store: Store) -> None:
    first = store.add_link("100", "main", "ics", "https://example.test/a.ics?token=SECRET")
    with pytest.raises(StoreError) as info:
        store.add_link("100", "main", "caldav", "https://example.test/a.ics?token=SECRET")
    assert str(info.value) == (
        f"link for extension 100 on main to that source exists already (id {first.id})"
    )
    assert store.list_links() == [first]


def test_same_source_for_another_extension_or_pbx_is_a_new_link(store: Store) -> None:
    a = store.add_link("100", "main", "ics", "https://example.test/a.ics")
    b = store.add_link("101", "main", "ics", "https://example.test/a.ics")
    c = store.add_link("100", "branch", "ics", "https://example.test/a.ics", active=False)
    assert store.list_links() == [a, b, c]
    assert [link.active for link in store.list_links()] == [True, True, False]


def test_add_link_refuses_bad_origin_and_non_json_settings(store: Store) -> None:
    with pytest.raises(StoreError, match="origin"):
        store.add_link("100", "main", "ics", "s", origin="web")
    with pytest.raises(StoreError, match="JSON"):
        store.add_link("100", "main", "ics", "s", {"when": datetime.now(UTC)})
    assert store.list_links() == []


def test_set_link_active(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "s")
    off = store.set_link_active(link.id, False)
    assert off.active is False
    assert store.get_link(link.id) == off
    assert store.list_links() == [off]
    assert store.set_link_active(link.id, True).active is True
    with pytest.raises(StoreError, match=f"no link with id {link.id + 1}"):
        store.set_link_active(link.id + 1, True)


def test_remove_link_removes_its_events_state_and_log(store: Store, store_url: str) -> None:
    gone = store.add_link("100", "main", "ics", "a")
    kept = store.add_link("101", "main", "ics", "b")
    for link in (gone, kept):
        store.replace_events(link.id, [vevent(f"u{link.id}")], state())
        store.log_sync(link.id, T0, "ok", 1, {})

    store.remove_link(gone.id)

    assert store.list_links() == [kept]
    assert store.load_events(gone.id) == ([], None)
    assert store.sync_log(gone.id) == []
    assert list(store.last_sync()) == [kept.id]
    assert store.load_events(kept.id)[0] == [vevent(f"u{kept.id}")]
    dump = table_dump(store_url)
    assert all(row[0] != gone.id for row in dump["events"] + dump["sync_state"])
    with pytest.raises(StoreError, match="no link with id"):
        store.remove_link(gone.id)


def test_removed_link_ids_are_not_reused(store: Store) -> None:
    first = store.add_link("100", "main", "ics", "a")
    store.remove_link(first.id)
    assert store.add_link("100", "main", "ics", "a").id > first.id


def test_sync_config_links_adds_updates_and_removes_only_config_links(store: Store) -> None:
    cli = store.add_link("100", "main", "ics", "cli-source")
    shadowed = store.add_link("101", "main", "ics", "both")
    first = store.sync_config_links(
        [
            ("200", "main", "ics", "a", {"x": 1}),
            ("201", "main", "google", "b", {}),
            ("101", "main", "caldav", "both", {"y": 2}),  # the CLI link wins
        ]
    )
    assert [(link.extension, link.source, link.origin) for link in first] == [
        ("200", "a", "config"),
        ("201", "b", "config"),
    ]
    a, b = first
    store.set_link_active(a.id, False)
    store.replace_events(b.id, [vevent("gone-with-b")], state())

    second = store.sync_config_links(
        [("200", "main", "ics", "a", {"x": 2}), ("202", "main", "ics", "c", {})]
    )

    assert [link.extension for link in second] == ["200", "202"]
    updated = second[0]
    assert updated.id == a.id
    assert updated.settings == {"x": 2}
    assert updated.active is False  # switched off by the CLI, stays off
    assert updated.created_at == a.created_at
    assert store.get_link(b.id) is None
    assert store.load_events(b.id) == ([], None)
    assert store.get_link(cli.id) == cli
    assert store.get_link(shadowed.id) == shadowed

    assert store.sync_config_links([]) == []
    assert store.list_links() == [cli, shadowed]


def test_sync_config_links_refuses_a_link_declared_twice(store: Store) -> None:
    store.sync_config_links([("200", "main", "ics", "a", {})])
    before = store.list_links()
    with pytest.raises(StoreError, match="declared twice"):
        store.sync_config_links(
            [("300", "main", "ics", "z", {}), ("300", "main", "google", "z", {})]
        )
    assert store.list_links() == before


def test_sync_config_links_unchanged_config_changes_nothing(store: Store) -> None:
    specs = [("200", "main", "ics", "a", {"x": [1]}), ("201", "main", "ics", "b", {})]
    assert store.sync_config_links(specs) == store.sync_config_links(specs)


# -- events ------------------------------------------------------------------------------


def test_replace_and_load_events(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    assert store.load_events(link.id) == ([], None)
    master = vevent("weekly@x")
    moved = vevent("weekly@x", "moved", rid="20260406T070000Z")
    single = vevent("single@x", "333")

    store.replace_events(link.id, [single, moved, master], state("e1"))
    stored, sync = store.load_events(link.id)
    assert stored == [single, master, moved]  # by uid, then recurrence id (master first)
    assert sync == state("e1")

    store.replace_events(link.id, [master], state("e2", sync_token="t2"))
    assert store.load_events(link.id) == ([master], state("e2", sync_token="t2"))

    store.replace_events(link.id, [], state(None))
    assert store.load_events(link.id) == ([], state(None))


def test_replace_events_keeps_unicode_and_long_text(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    big = StoredEvent("ü@x", None, "DESCRIPTION:" + "é€😀" * 20_000 + "\r\n")
    store.replace_events(link.id, [big], state())
    assert store.load_events(link.id)[0] == [big]


def test_replace_events_with_a_duplicate_keeps_the_previous_events(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    store.replace_events(link.id, [vevent("old")], state("old"))

    with pytest.raises(StoreError, match=r"event new .*appears twice") as info:
        store.replace_events(link.id, [vevent("x"), vevent("new"), vevent("new")], state("new"))

    assert "\n" not in str(info.value)
    assert store.load_events(link.id) == ([vevent("old")], state("old"))


def test_replace_events_failing_midway_keeps_the_previous_events(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = store.add_link("100", "main", "ics", "a")
    store.replace_events(link.id, [vevent("old1"), vevent("old2")], state("old"))
    reached: list[bool] = []

    def failing_upsert(conn: sa.Connection, row: Any) -> None:
        # By now the old events are deleted and the new ones inserted, in this transaction.
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 1
        reached.append(True)
        conn.execute(sa.text("SELECT * FROM no_such_table"))  # a real database error

    monkeypatch.setattr(store_events, "save_state", failing_upsert)
    with pytest.raises(StoreError) as info:
        store.replace_events(link.id, [vevent("new")], state("new"))

    assert reached == [True]
    assert "no_such_table" in str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert store.load_events(link.id) == ([vevent("old1"), vevent("old2")], state("old"))


def test_replace_events_for_unknown_link(store: Store) -> None:
    with pytest.raises(StoreError, match="no link with id 42"):
        store.replace_events(42, [vevent("a")], state())


def test_load_all_events_in_at_most_two_queries(store: Store) -> None:
    empty = store.add_link("100", "main", "ics", "empty")
    synced = store.add_link("101", "main", "ics", "synced")
    touched = store.add_link("102", "main", "ics", "touched", active=False)
    store.replace_events(synced.id, [vevent("b"), vevent("a")], state("s"))
    store.replace_events(touched.id, [], state("t"))

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = store._db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        everything = store.load_all_events()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)

    assert everything == {
        empty.id: ([], None),
        synced.id: ([vevent("a"), vevent("b")], state("s")),
        touched.id: ([], state("t")),
    }
    assert len(statements) <= 2
    for link in (empty, synced, touched):
        assert store.load_events(link.id) == everything[link.id]


# -- applied state -----------------------------------------------------------------------


def test_save_and_load_applied_changes(store: Store) -> None:
    assert store.load_applied("main") == {}
    store.save_applied_changes("main", {"100": ["+31612345678", "333"], "101": ("201",)})
    store.save_applied_changes("branch", {"100": ["+3120"]})
    assert store.load_applied("main") == {"100": ("+31612345678", "333"), "101": ("201",)}

    # only the named extensions change; an empty list means nothing applied any more
    store.save_applied_changes("main", {"101": [], "102": ["333"], "100": ["444"]})
    assert store.load_applied("main") == {"100": ("444",), "102": ("333",)}
    assert store.load_applied("branch") == {"100": ("+3120",)}

    store.save_applied_changes("main", {"404": []})  # deleting what is not there is fine
    store.save_applied_changes("main", {})
    assert store.load_applied("main") == {"100": ("444",), "102": ("333",)}


def test_save_applied_changes_writes_only_the_changed_rows(store: Store) -> None:
    store.save_applied_changes("main", {str(200 + n): ["333"] for n in range(600)})
    statements: list[tuple[str, int]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        word = statement.lstrip().split()[0].upper()
        if word in ("INSERT", "UPDATE", "DELETE"):
            rows = len(parameters) if isinstance(parameters, list) else 1
            statements.append((word, rows))

    engine = store._db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        store.save_applied_changes("main", {"200": ["444"], "201": []})
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)

    # one DELETE for the one removed row, one upsert for the one changed row; the other
    # 598 extensions are not written (the old save_applied deleted and re-inserted all)
    assert sorted(statements) == [("DELETE", 1), ("INSERT", 1)]
    applied = store.load_applied("main")
    assert len(applied) == 599
    assert applied["200"] == ("444",)
    assert "201" not in applied


def test_save_applied_changes_refuses_a_string_as_targets(store: Store) -> None:
    store.save_applied_changes("main", {"100": ["333"]})
    with pytest.raises(StoreError, match="must be a list"):
        store.save_applied_changes("main", {"101": ["1"], "100": "333"})
    assert store.load_applied("main") == {"100": ("333",)}


# -- links_version -----------------------------------------------------------------------


def test_links_version_moves_on_every_link_change_and_only_then(store: Store) -> None:
    seen = [store.links_version()]

    def moved() -> bool:
        now = store.links_version()
        changed = now != seen[-1]
        seen.append(now)
        return changed

    link = store.add_link("100", "main", "ics", "a")
    assert moved()
    store.set_link_active(link.id, False)
    assert moved()
    store.set_link_active(link.id, False)  # already off: nothing changed
    assert not moved()
    store.set_link_active(link.id, True)
    assert moved()
    specs = [("200", "main", "ics", "b", {"x": 1})]
    store.sync_config_links(specs)
    assert moved()
    store.sync_config_links(specs)  # unchanged config
    assert not moved()
    store.sync_config_links([("200", "main", "ics", "b", {"x": 2})])  # settings changed
    assert moved()
    store.replace_events(link.id, [vevent("a")], state())  # not a link change
    store.log_sync(link.id, T0, "ok", 1, {})
    store.save_applied_changes("main", {"100": ["333"]})
    assert not moved()
    store.sync_config_links([])  # removes the config link
    assert moved()
    store.remove_link(link.id)
    assert moved()
    with pytest.raises(StoreError):
        store.add_link("100", "main", "ics", "z", origin="web")
    with pytest.raises(StoreError):
        store.remove_link(link.id)
    assert not moved()
    assert seen == sorted(seen)  # it only grows


def test_links_version_is_seen_by_another_store_on_the_same_database(
    store: Store, store_url: str
) -> None:
    """The CLI (another process, another Store) writes; the daemon's watcher sees it."""
    with Store.open(store_url) as cli:
        before = store.links_version()
        link = cli.add_link("100", "main", "ics", "a")
        after_add = store.links_version()
        cli.set_link_active(link.id, False)
        assert before < after_add < store.links_version()
        assert store.list_links() == [cli.get_link(link.id)]


def test_links_version_is_one_query(store: Store) -> None:
    for n in range(50):
        store.add_link(str(100 + n), "main", "ics", "a")
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = store._db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        store.links_version()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert [s for s in statements if "links_version" in s] == statements
    assert len(statements) == 1


# -- sync states -------------------------------------------------------------------------


def test_load_sync_states_reads_no_events(store: Store) -> None:
    a = store.add_link("100", "main", "ics", "a")
    b = store.add_link("101", "main", "ics", "b")
    store.add_link("102", "main", "ics", "never fetched")
    store.replace_events(a.id, [vevent("x")], state("ea"))
    store.replace_events(b.id, [], state("eb", at=T0 + timedelta(hours=1)))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = store._db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        states = store.load_sync_states()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)

    assert states == {a.id: state("ea"), b.id: state("eb", at=T0 + timedelta(hours=1))}
    assert len(statements) == 1
    assert "events" not in statements[0].replace("sync_state", "")


# -- expansions --------------------------------------------------------------------------


def instance(uid: str, hour: int, title: str = "0612345678", **flags: bool) -> EventInstance:
    start = T0 + timedelta(hours=hour)
    return EventInstance(uid, start, start + timedelta(minutes=30), title, **flags)


def expansion(*instances: EventInstance, computed: datetime = T0) -> ExpansionRecord:
    return ExpansionRecord(T0 - timedelta(days=1), T0 + timedelta(days=14), instances, computed)


def test_save_and_load_expansions(store: Store) -> None:
    a = store.add_link("100", "main", "ics", "a")
    b = store.add_link("101", "main", "ics", "b")
    store.add_link("102", "main", "ics", "never expanded")
    assert store.load_expansions() == {}
    first = expansion(
        instance("weekly@x", 0),
        instance("weekly@x", 168),
        instance("free@x", 3, "333", transparent=True),
        instance("day@x", 24, 'Ünïcode ☎ "quoted"', all_day=True),
        instance("both@x", 5, "", transparent=True, all_day=True),
    )
    store.save_expansion(a.id, first)
    store.save_expansion(b.id, expansion())
    assert store.load_expansions() == {a.id: first, b.id: expansion()}

    later = expansion(instance("new@x", 2), computed=T0 + timedelta(hours=1))
    store.save_expansion(a.id, later)  # replaces the link's record
    loaded = store.load_expansions()
    assert loaded == {a.id: later, b.id: expansion()}
    for record in loaded.values():
        for value in (record.range_start, record.range_end, record.computed_at):
            assert value.tzinfo is UTC
        for one in record.instances:
            assert one.start.tzinfo is UTC and one.end.tzinfo is UTC


def test_expansion_times_keep_their_instant_and_microseconds(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    plus_two = timezone(timedelta(hours=2))
    odd = EventInstance(
        "odd@x",
        datetime(2026, 7, 1, 9, 30, 15, 123456, tzinfo=plus_two),
        datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        "100",
    )
    early = EventInstance(
        "early@x", datetime(1900, 1, 1, tzinfo=UTC), datetime(1900, 1, 2, tzinfo=UTC), "100"
    )
    store.save_expansion(link.id, expansion(odd, early))
    (loaded_odd, loaded_early) = store.load_expansions()[link.id].instances
    assert loaded_odd == odd and loaded_odd.start.tzinfo is UTC
    assert loaded_odd.start.hour == 7
    assert loaded_early == early


def test_expansion_refuses_naive_times_and_unknown_links(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    naive = datetime(2026, 3, 30, 7, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="naive"):
        store.save_expansion(link.id, expansion(EventInstance("n@x", naive, naive, "1")))
    with pytest.raises(ValueError, match="naive"):
        store.save_expansion(link.id, ExpansionRecord(naive, T0, (), T0))
    with pytest.raises(StoreError, match="no link with id 4242"):
        store.save_expansion(4242, expansion())
    assert store.load_expansions() == {}


def test_removing_a_link_removes_its_expansion(store: Store, store_url: str) -> None:
    gone = store.add_link("100", "main", "ics", "a")
    kept = store.add_link("101", "main", "ics", "b")
    config = store.sync_config_links([("200", "main", "ics", "c", {})])[0]
    for link in (gone, kept, config):
        store.save_expansion(link.id, expansion(instance(f"u{link.id}", 1)))
    store.remove_link(gone.id)
    store.sync_config_links([])
    assert list(store.load_expansions()) == [kept.id]
    assert [row[0] for row in table_dump(store_url)["expansions"]] == [kept.id]


def test_a_damaged_expansion_is_a_store_error(store: Store, store_url: str) -> None:
    link = store.add_link("100", "main", "ics", "a")
    store.save_expansion(link.id, expansion(instance("a@x", 1)))
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE expansions SET instances = '{\"v\": 99}'"))
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match=f"saved expansion of link {link.id} cannot be read"):
        store.load_expansions()


# -- ports -------------------------------------------------------------------------------


def test_store_satisfies_every_consumer_port(store: Store) -> None:
    sync: SyncStore = store
    applied: AppliedStore = store
    watch: LinkWatchStore = store
    admin: LinkAdminStore = store
    everything: StateStore = store
    for port in (SyncStore, AppliedStore, LinkWatchStore, LinkAdminStore, StateStore):
        assert isinstance(store, port)
    assert {sync, applied, watch, admin, everything} == {store}


def test_dropped_calls_are_gone(store: Store) -> None:
    for name in ("touch_sync_state", "schema_revision", "save_applied"):
        assert not hasattr(store, name)
    with pytest.raises(TypeError):
        store.list_links(active_only=True)  # type: ignore[call-arg]


# -- sync log ----------------------------------------------------------------------------


def test_sync_log_newest_first_with_limit(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    other = store.add_link("101", "main", "ics", "b")
    for minute in range(5):
        store.log_sync(link.id, T0 + timedelta(minutes=minute), "ok", minute, {})
    store.log_sync(
        link.id, T0 + timedelta(minutes=9), "error", 0, {"not-a-number": 2}, "HTTP 500 from x"
    )
    store.log_sync(other.id, T0, "ok", 1, {})

    entries = store.sync_log(link.id)
    assert [e.at for e in entries] == [T0 + timedelta(minutes=m) for m in (9, 4, 3, 2, 1, 0)]
    newest = entries[0]
    assert (newest.link_id, newest.result, newest.accepted) == (link.id, "error", 0)
    assert newest.rejected == {"not-a-number": 2}
    assert newest.message == "HTTP 500 from x"
    assert [e.accepted for e in store.sync_log(link.id, limit=2)] == [0, 4]
    assert store.sync_log(404) == []


def test_sync_log_keeps_the_newest_rows_per_link(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    other = store.add_link("101", "main", "ics", "b")
    store.log_sync(other.id, T0, "ok", 1, {})
    total = SYNC_LOG_KEEP + 5
    for i in range(total):
        store.log_sync(link.id, T0 + timedelta(seconds=i), "ok", i, {})

    kept = store.sync_log(link.id, limit=1000)
    assert len(kept) == SYNC_LOG_KEEP == 200
    assert kept[0].accepted == total - 1
    assert kept[-1].accepted == total - SYNC_LOG_KEEP  # the five oldest are gone
    assert len(store.sync_log(other.id)) == 1


def test_last_sync_is_the_newest_entry_per_link(store: Store) -> None:
    a = store.add_link("100", "main", "ics", "a")
    b = store.add_link("101", "main", "ics", "b")
    store.add_link("102", "main", "ics", "never synced")
    store.log_sync(a.id, T0 + timedelta(minutes=2), "ok", 2, {})
    store.log_sync(a.id, T0 + timedelta(minutes=1), "late-logged", 1, {})  # older `at`
    store.log_sync(b.id, T0, "error", 0, {}, "timeout")
    store.log_sync(b.id, T0, "ok", 3, {})  # same time: the later row wins

    last = store.last_sync()
    assert sorted(last) == [a.id, b.id]
    assert (last[a.id].result, last[a.id].accepted) == ("ok", 2)
    assert (last[b.id].result, last[b.id].accepted) == ("ok", 3)


def test_log_sync_for_unknown_link(store: Store) -> None:
    with pytest.raises(StoreError, match="no link with id 42"):
        store.log_sync(42, T0, "ok", 0, {})


# -- times -------------------------------------------------------------------------------


def test_times_come_back_as_aware_utc(store: Store) -> None:
    amsterdam_summer = timezone(timedelta(hours=2))
    at = datetime(2026, 7, 1, 9, 30, 15, 123456, tzinfo=amsterdam_summer)
    link = store.add_link("100", "main", "ics", "a")
    store.replace_events(link.id, [], state(at=at))
    store.log_sync(link.id, at, "ok", 0, {})

    fetched = store.load_events(link.id)[1]
    assert fetched is not None
    logged = store.sync_log(link.id)[0].at
    for value in (fetched.fetched_at, logged, store.list_links()[0].created_at):
        assert value.tzinfo is UTC
    assert fetched.fetched_at == logged == at
    assert logged.hour == 7  # the same instant, expressed in UTC


def test_naive_times_are_refused(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    naive = datetime(2026, 3, 30, 7, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="naive"):
        store.log_sync(link.id, naive, "ok", 0, {})
    with pytest.raises(ValueError, match="naive"):
        store.replace_events(link.id, [vevent("a")], state(at=naive))
    assert store.load_events(link.id) == ([], None)


# -- threads -----------------------------------------------------------------------------


def test_calls_from_many_threads(store: Store) -> None:
    link = store.add_link("100", "main", "ics", "a")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                mine = store.add_link(f"2{n}{i}", "main", "ics", "t")
                store.replace_events(mine.id, [vevent(f"{n}-{i}")], state())
                store.log_sync(link.id, T0 + timedelta(seconds=n * 100 + i), "ok", i, {})
                store.load_all_events()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(store.list_links()) == 81
    assert len(store.sync_log(link.id, limit=1000)) == 80


def test_link_is_a_plain_value() -> None:
    link = Link(1, "100", "main", "ics", "a", {}, True, "cli", T0)
    with pytest.raises(AttributeError):
        link.active = False  # type: ignore[misc]


def test_links_version_survives_a_lost_counter_row(store: Store, store_url: str) -> None:
    store.add_link("100", "main", "ics", "a")
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM links_version"))
    finally:
        engine.dispose()
    assert store.links_version() == 0
    store.add_link("101", "main", "ics", "b")
    first = store.links_version()
    store.add_link("102", "main", "ics", "c")
    assert 0 < first < store.links_version()


def test_links_version_sees_a_change_made_by_another_process(store: Store, store_url: str) -> None:
    """The CLI is another process with its own connections; the daemon's poll sees it."""
    before = store.links_version()
    script = (
        "import sys\n"
        "from pbxcal.store import Store\n"
        "with Store.open(sys.argv[1]) as other:\n"
        "    print(other.add_link('100', 'main', 'ics', 'from-cli').id)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, store_url], capture_output=True, text=True, check=True
    )
    assert store.links_version() > before
    assert [link.id for link in store.list_links()] == [int(done.stdout)]


# -- change sets (the incremental port, issue #9) ------------------------------------


def row(uid: str, summary: str = "0612345678", rid: str | None = None) -> EventRow:
    stored = vevent(uid, summary, rid)
    return EventRow(stored.uid, stored.recurrence_id, stored.ical)


def test_apply_changes_full_then_increments_with_cursor_and_expansion(store: Store) -> None:
    link = store.add_link("100", "main", "caldav", "https://dav.example/cal/")
    record = ExpansionRecord(T0, T0 + timedelta(days=28), (), T0)
    store.apply_changes(
        link.id,
        ChangeSet("c1", True, (row("a"), row("b"), row("b", "201", "20260330T070000Z"))),
        T0,
        record,
    )
    events, state = store.load_events(link.id)
    assert sorted((e.uid, e.recurrence_id or "") for e in events) == [
        ("a", ""), ("b", ""), ("b", "20260330T070000Z")
    ]
    assert state is not None and state.sync_token == "c1"
    assert store.load_expansions()[link.id] == record

    store.apply_changes(
        link.id,
        ChangeSet(
            "c2",
            False,
            (row("a", "202"), row("c")),
            removed_instances=(("b", "20260330T070000Z"),),
        ),
        T0 + timedelta(minutes=1),
    )
    events, state = store.load_events(link.id)
    assert sorted(e.uid for e in events) == ["a", "b", "c"]
    assert "SUMMARY:202" in next(e.ical for e in events if e.uid == "a")
    assert state is not None and state.sync_token == "c2"

    store.apply_changes(link.id, ChangeSet("c3", False, removed=("b",)), T0 + timedelta(minutes=2))
    assert sorted(e.uid for e in store.load_events(link.id)[0]) == ["a", "c"]

    store.apply_changes(link.id, ChangeSet("c4", True, (row("z"),)), T0 + timedelta(minutes=3))
    assert [e.uid for e in store.load_events(link.id)[0]] == ["z"]


def test_apply_changes_is_all_or_nothing(store: Store) -> None:
    link = store.add_link("100", "main", "caldav", "https://dav.example/cal/")
    store.apply_changes(link.id, ChangeSet("c1", True, (row("a"),)), T0)
    naive = ExpansionRecord(T0.replace(tzinfo=None), T0, (), T0)
    with pytest.raises((StoreError, ValueError)):
        store.apply_changes(link.id, ChangeSet("c2", True, (row("b"),)), T0, naive)
    events, state = store.load_events(link.id)
    assert [e.uid for e in events] == ["a"] and state is not None and state.sync_token == "c1"
    with pytest.raises(StoreError):
        store.apply_changes(link.id + 99, ChangeSet("c1", True, (row("a"),)), T0)

"""The portal/admin tables of the store (``store.portal``): invitations, OAuth flows,
admin tokens, audit log. Written against a ``store_url`` fixture so that
``tests/integration/test_admin_postgres.py`` runs the same tests on a real PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pbxcal.store import KeyRing, Store, StoreError
from pbxcal.store.portal import FLOW_LIFETIME
from pbxcal.store.secrets import new_key

CLAIMERS = 20


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url, keys=KeyRing([new_key()]))
    yield opened
    opened.close()


def invite(store: Store, token_hash: str = "a" * 64, hours: int = 72) -> int:
    expires = datetime.now(UTC) + timedelta(hours=hours)
    return store.add_invitation(
        "main", "101", token_hash, email=None, expires_at=expires, created_by="test"
    ).id


def race(count: int, claim: object) -> list[object]:
    """Run ``claim()`` in ``count`` threads released at the same moment; their results."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = claim()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_invitation_round_trip_by_hash(store: Store) -> None:
    expires = datetime(2030, 1, 1, 12, tzinfo=UTC)
    made = store.add_invitation(
        "main", "101", "f" * 64, email="anna@example.com", expires_at=expires, created_by="cli:x"
    )
    found = store.invitation_by_hash("f" * 64)
    assert found == made
    assert (found.pbx, found.extension, found.email, found.expires_at) == (
        "main", "101", "anna@example.com", expires,
    )  # fmt: skip
    assert found.used_at is None and found.link_id is None and found.created_by == "cli:x"
    assert store.invitation_by_hash("0" * 64) is None
    assert store.get_invitation(made.id) == made


def test_a_token_hash_is_unique(store: Store) -> None:
    invite(store, "b" * 64)
    with pytest.raises(StoreError):
        invite(store, "b" * 64)


def test_use_invitation_once(store: Store) -> None:
    invitation = invite(store)
    link = store.add_link("101", "main", "ics", "/tmp/a.ics")
    assert store.use_invitation(invitation, link.id) is True
    assert store.use_invitation(invitation, link.id) is False
    used = store.get_invitation(invitation)
    assert used is not None and used.used_at is not None and used.link_id == link.id


def test_twenty_threads_claim_one_invitation_and_exactly_one_wins(store: Store) -> None:
    invitation = invite(store)
    links = [store.add_link("101", "main", "ics", f"/tmp/{n}.ics").id for n in range(CLAIMERS)]
    turn = iter(links)
    lock = threading.Lock()

    def claim() -> tuple[bool, int]:
        with lock:
            link_id = next(turn)
        return store.use_invitation(invitation, link_id), link_id

    results = race(CLAIMERS, claim)
    winners = [link_id for won, link_id in results if won]  # type: ignore[misc]
    assert len(winners) == 1
    stored = store.get_invitation(invitation)
    assert stored is not None and stored.link_id == winners[0]


def test_removing_the_link_keeps_the_invitation_used(store: Store) -> None:
    invitation = invite(store)
    link = store.add_link("101", "main", "ics", "/tmp/a.ics")
    store.use_invitation(invitation, link.id)
    store.remove_link(link.id)
    after = store.get_invitation(invitation)
    assert after is not None and after.used_at is not None and after.link_id is None
    assert store.use_invitation(invitation, 99) is False


def test_reopen_invitation_for_a_relink(store: Store) -> None:
    invitation = invite(store)
    link = store.add_link("101", "main", "ics", "/tmp/a.ics")
    store.use_invitation(invitation, link.id)
    assert store.reopen_invitation(link.id) == 1
    store.remove_link(link.id)
    again = store.add_link("101", "main", "ics", "/tmp/b.ics")
    assert store.use_invitation(invitation, again.id) is True


def test_list_invitations_newest_first_and_by_pbx(store: Store) -> None:
    first = invite(store, "1" * 64)
    expires = datetime.now(UTC) + timedelta(hours=1)
    other = store.add_invitation(
        "branch", "200", "2" * 64, email=None, expires_at=expires, created_by="t"
    ).id
    assert [i.id for i in store.list_invitations()] == [other, first]
    assert [i.id for i in store.list_invitations(["main"])] == [first]
    assert store.list_invitations([]) == []


def test_flow_is_sealed_and_taken_once(store: Store, store_url: str) -> None:
    invitation = invite(store)
    secret = b'{"code_verifier": "very secret verifier"}'
    store.add_flow("s" * 64, invitation, "google", secret)
    with store._db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT sealed FROM portal_flows")).scalar_one()
    assert b"very secret" not in bytes(stored)
    flow = store.take_flow("s" * 64)
    assert flow is not None and flow.plaintext == secret
    assert (flow.invitation_id, flow.provider) == (invitation, "google")
    assert store.take_flow("s" * 64) is None
    assert store.take_flow("t" * 64) is None


def test_twenty_threads_take_one_flow_and_exactly_one_gets_it(store: Store) -> None:
    invitation = invite(store)
    store.add_flow("r" * 64, invitation, "microsoft", b"flow")
    results = race(CLAIMERS, lambda: store.take_flow("r" * 64))
    taken = [r for r in results if r is not None]
    assert len(taken) == 1


def test_an_old_flow_cannot_be_taken(store: Store) -> None:
    invitation = invite(store)
    store.add_flow("o" * 64, invitation, "google", b"flow")
    later = datetime.now(UTC) + FLOW_LIFETIME + timedelta(seconds=1)
    assert store.take_flow("o" * 64, now=later) is None
    assert store.take_flow("o" * 64) is not None


def test_a_flow_sealed_for_one_state_does_not_open_for_another(store: Store) -> None:
    invitation = invite(store)
    store.add_flow("x" * 64, invitation, "google", b"one")
    store.add_flow("y" * 64, invitation, "google", b"two")
    with store._db.engine.begin() as conn:
        sealed = conn.execute(
            sa.text("SELECT sealed FROM portal_flows WHERE state_hash = :s"), {"s": "x" * 64}
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE portal_flows SET sealed = :v WHERE state_hash = :s"),
            {"v": sealed, "s": "y" * 64},
        )
    with pytest.raises(StoreError, match="altered or copied"):
        store.take_flow("y" * 64)


def test_flows_need_the_key_ring(store_url: str) -> None:
    with Store.open(store_url) as bare:
        invitation = invite(bare)
        with pytest.raises(StoreError, match="no encryption key"):
            bare.add_flow("k" * 64, invitation, "google", b"x")


def test_admin_tokens_by_hash_scope_and_revocation(store: Store) -> None:
    everyone = store.add_admin_token("ops", "1" * 64, None)
    reseller = store.add_admin_token("reseller", "2" * 64, ["b", "a", "a"])
    assert everyone.pbxes is None and reseller.pbxes == ("a", "b")
    found = store.admin_token_by_hash("2" * 64)
    assert found is not None and found[0].name == "reseller" and found[1] == "2" * 64
    with pytest.raises(StoreError, match="exists already"):
        store.add_admin_token("ops", "3" * 64, None)
    revoked = store.revoke_admin_token("ops")
    assert revoked.revoked_at is not None
    assert store.revoke_admin_token("ops").revoked_at == revoked.revoked_at
    with pytest.raises(StoreError, match="no admin token"):
        store.revoke_admin_token("nobody")
    at = datetime(2030, 1, 1, tzinfo=UTC)
    store.touch_admin_token(reseller.id, at)
    assert [(t.name, t.last_used_at) for t in store.list_admin_tokens()] == [
        ("ops", None), ("reseller", at),
    ]  # fmt: skip


def test_audit_log_newest_first(store: Store) -> None:
    store.record_audit("ops", "link.show", "link:1", {"status": 200}, "127.0.0.1")
    store.record_audit("-", "auth.refused", "/api/v1/links", None, None)
    entries = store.audit_entries()
    assert [(e.actor, e.action, e.target, e.detail, e.remote) for e in entries] == [
        ("-", "auth.refused", "/api/v1/links", {}, None),
        ("ops", "link.show", "link:1", {"status": 200}, "127.0.0.1"),
    ]


def test_audit_log_keeps_the_newest_lines(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from pbxcal.store import portal

    monkeypatch.setattr(portal, "AUDIT_KEEP", 5)
    monkeypatch.setattr(portal, "AUDIT_PRUNE_EVERY", 4)
    for n in range(1, 13):
        store.record_audit("ops", "link.show", f"link:{n}")
    kept = [e.target for e in store.audit_entries(100)]
    assert kept == [f"link:{n}" for n in range(12, 7, -1)]  # pruned at 4, 8 and 12


def test_audit_lines_in_one_batch_are_kept_in_order_and_pruned(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbxcal.store import portal
    from pbxcal.store.portal import AuditLine

    monkeypatch.setattr(portal, "AUDIT_KEEP", 5)
    monkeypatch.setattr(portal, "AUDIT_PRUNE_EVERY", 4)
    at = datetime(2026, 3, 30, 9, tzinfo=UTC)
    store.record_audit_lines([])
    store.record_audit_lines(
        [AuditLine(at, "ops", "link.show", f"link:{n}", {"n": n}, None) for n in range(1, 4)]
    )
    assert [e.target for e in store.audit_entries(100)] == ["link:3", "link:2", "link:1"]
    store.record_audit_lines(  # crosses id 4 and 8: pruned to the newest five
        [AuditLine(at, "ops", "link.show", f"link:{n}", {"n": n}, "::1") for n in range(4, 10)]
    )
    entries = store.audit_entries(100)
    assert [e.target for e in entries] == [f"link:{n}" for n in range(9, 4, -1)]
    assert (entries[0].at, entries[0].detail, entries[0].remote) == (at, {"n": 9}, "::1")

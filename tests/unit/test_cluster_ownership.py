"""Properties of the ownership assignment (``pbxcal.cluster.ownership``), by hypothesis."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pbxcal.cluster.ownership import MemberAge, assign, plan_moves, rendezvous_owner

key_sets = st.sets(st.text("abcdefgh0123456789:", min_size=1, max_size=8), max_size=60)
member_sets = st.sets(st.uuids().map(str), min_size=1, max_size=7)


def counts(result: dict[str, str], members: set[str]) -> Counter[str]:
    counter: Counter[str] = Counter(dict.fromkeys(members, 0))
    counter.update(result.values())
    return counter


def balanced(result: dict[str, str], members: set[str]) -> bool:
    per_member = counts(result, members).values()
    return max(per_member) - min(per_member) <= 1


@given(key_sets, member_sets)
def test_every_key_has_exactly_one_live_owner_and_the_load_is_balanced(
    keys: set[str], members: set[str]
) -> None:
    result = assign(keys, members)
    assert set(result) == keys  # a dict: at most one owner; every key has one
    assert set(result.values()) <= members
    assert balanced(result, members)


@given(key_sets, member_sets, st.data())
def test_the_answer_does_not_depend_on_input_order(
    keys: set[str], members: set[str], data: st.DataObject
) -> None:
    current = assign(keys, list(members)[1:])
    shuffled_keys = data.draw(st.permutations(sorted(keys)))
    shuffled_members = data.draw(st.permutations(sorted(members)))
    assert assign(shuffled_keys, shuffled_members, current) == assign(
        sorted(keys), sorted(members), dict(sorted(current.items()))
    )


@given(key_sets, member_sets, st.uuids().map(str))
def test_a_join_moves_only_the_newcomers_share_to_the_newcomer(
    keys: set[str], members: set[str], newcomer: str
) -> None:
    before = assign(keys, members)
    after = assign(keys, members | {newcomer}, before)
    moved = {key for key in keys if after[key] != before[key]}
    assert all(after[key] == newcomer for key in moved)
    assert len(moved) in (len(keys) // (len(members) + 1), -(-len(keys) // (len(members) + 1)))
    assert balanced(after, members | {newcomer})


@given(key_sets, member_sets.filter(lambda m: len(m) >= 2), st.data())
def test_a_leave_moves_only_the_leavers_keys(
    keys: set[str], members: set[str], data: st.DataObject
) -> None:
    leaver = data.draw(st.sampled_from(sorted(members)))
    before = assign(keys, members)
    after = assign(keys, members - {leaver}, before)
    moved = {key for key in keys if after[key] != before[key]}
    assert moved == {key for key in keys if before[key] == leaver}
    assert balanced(after, members - {leaver})


@given(key_sets, member_sets, st.dictionaries(st.text(max_size=3), st.text(max_size=3)))
def test_a_balanced_assignment_is_a_fixed_point_even_from_any_start(
    keys: set[str], members: set[str], junk: dict[str, str]
) -> None:
    first = assign(keys, members, junk)  # keys and holders that do not exist are ignored
    assert assign(keys, members, first) == first
    assert balanced(first, members)


@settings(max_examples=50)
@given(key_sets, member_sets, st.uuids().map(str))
def test_a_member_that_has_not_settled_takes_nothing_held_and_handover_is_gradual(
    keys: set[str], members: set[str], newcomer: str
) -> None:
    holders = assign(keys, members)
    settled = [MemberAge(member, 100.0) for member in sorted(members)]
    fresh = [*settled, MemberAge(newcomer, 1.0)]
    # before the settle time nobody gives anything to the newcomer
    for member in members:
        assert plan_moves(keys, fresh, holders, member, settle=30.0).release == ()
    assert plan_moves(keys, fresh, holders, newcomer, settle=30.0).acquire == ()
    # after it, each old member releases at most one key per round, each to the newcomer
    grown = [*settled, MemberAge(newcomer, 31.0)]
    released = []
    for member in members:
        moves = plan_moves(keys, grown, holders, member, settle=30.0)
        assert len(moves.release) <= 1
        assert all(moves.targets[key] == newcomer for key in moves.release)
        released.extend(moves.release)
    # and only keys nobody holds any more are acquired
    remaining = {k: h for k, h in holders.items() if k not in released}
    moves = plan_moves(keys, grown, remaining, newcomer, settle=30.0)
    assert set(moves.acquire) == set(released)


@given(key_sets, member_sets)
def test_with_every_member_new_the_keys_are_still_spread(keys: set[str], members: set[str]) -> None:
    ages = [MemberAge(member, 0.0) for member in sorted(members)]
    wanted: dict[str, str] = {}
    for member in members:
        for key in plan_moves(keys, ages, {}, member, settle=30.0).acquire:
            assert key not in wanted  # no two members go for the same free key
            wanted[key] = member
    assert set(wanted) == keys
    assert balanced(wanted, members)


def test_no_members_no_owners() -> None:
    assert assign(["pbx:a"], []) == {}


@given(key_sets, member_sets, st.uuids().map(str))
def test_memoryless_owners_move_only_to_a_joiner_and_only_from_a_leaver(
    keys: set[str], members: set[str], other: str
) -> None:
    before = {key: rendezvous_owner(key, members) for key in keys}
    joined = {key: rendezvous_owner(key, [*members, other]) for key in keys}
    assert all(joined[k] in (before[k], other) for k in keys)
    left = {key: rendezvous_owner(key, members - {min(members)}) for key in keys}
    assert all(left[k] == before[k] for k in keys if before[k] != min(members))
    assert rendezvous_owner("pbx:a", []) is None

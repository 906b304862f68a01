"""Who should own what: a balanced, sticky assignment of keys (PBXes, links) to members.

Pure: no I/O, no clock (ages are arguments), no asyncio; every member computes the same
answer from the same inputs, so no coordinator is needed.

``assign(keys, members, current)``:

* every key gets exactly one member (none when there are no members);
* balanced: each member gets ``n // m`` or ``n // m + 1`` keys;
* sticky: a key stays with its current owner while that owner is a member and within
  its quota; a member over its quota sheds the keys it ranks lowest; only dead owners'
  keys and that excess move. So when a member joins, only the newcomer gains (its share,
  and nothing else moves); when one leaves, only its keys move;
* a key that has to move goes to the member that ranks it highest (rendezvous / highest
  random weight hashing, ``rank``) among those with room, which spreads moved keys
  evenly and independently of the order of members.

``plan_moves`` adds hysteresis for leases: a member that has not been alive for the
settle time yet is given nothing that somebody else holds, a member releases a lease
only when its new target has settled, and at most ``max_releases`` per round, so
ownership moves back to a joining member gradually and a flaky member cannot make it
flap. With no settled member at all (a cold start, or every old member dead) everyone
alive counts, so a key is never left without a candidate.

What it must not do: talk to the database (``members`` and ``lease`` do) or depend on
dict or set iteration order (results must agree across processes).

``rendezvous_owner(key, members)`` is the memoryless form for work that has no lease
(which member syncs a link): every member agrees from the member list alone, and only
the keys of a member that joins or leaves move.

Start reading at ``assign``, then ``plan_moves``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def rank(key: str, member: str) -> int:
    """The rendezvous weight of ``member`` for ``key`` (higher wins); stable everywhere."""
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_owner(key: str, members: Iterable[str]) -> str | None:
    """The member that ranks ``key`` highest; None without members.

    Memoryless, so every process agrees from the member list alone: for work without a
    lease (which process syncs a link), where an uneven share is fine and only the keys
    of a joining or leaving member may move.
    """
    return max(members, key=lambda member: (rank(key, member), member), default=None)


def assign(
    keys: Iterable[str], members: Iterable[str], current: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Key -> member; see the module docstring for the guarantees."""
    member_list = sorted(set(members))
    key_list = sorted(set(keys))
    if not member_list:
        return {}
    known = set(member_list)
    held: dict[str, list[str]] = {member: [] for member in member_list}
    for key in key_list:
        owner = (current or {}).get(key)
        if owner is not None and owner in known:
            held[owner].append(key)
    base, extra = divmod(len(key_list), len(member_list))
    # The ``extra`` members that get one key more are those holding most now, so the
    # fewest keys move; ties go by a hash of the member id (stable, spread).
    by_holding = sorted(member_list, key=lambda m: (-len(held[m]), -rank("", m), m))
    quota = {member: base + (1 if i < extra else 0) for i, member in enumerate(by_holding)}
    result: dict[str, str] = {}
    freed = [key for key in key_list if (current or {}).get(key) not in known]
    room: dict[str, int] = {}
    for member in member_list:
        mine = sorted(held[member], key=lambda k: (-rank(k, member), k))
        keep = mine[: quota[member]]
        freed.extend(mine[quota[member] :])
        result.update(dict.fromkeys(keep, member))
        room[member] = quota[member] - len(keep)
    for key in sorted(freed):
        for member in sorted(member_list, key=lambda m: (-rank(key, m), m)):
            if room[member] > 0:
                result[key] = member
                room[member] -= 1
                break
    return result


@dataclass(frozen=True)
class MemberAge:
    """A live member and how long it has been alive without a break (database clock)."""

    member_id: str
    alive_for: float


@dataclass(frozen=True)
class Moves:
    """What one member should do this round."""

    #: keys it should own that nobody holds: try to acquire them
    acquire: tuple[str, ...]
    #: keys it holds but should hand over (their target has settled): release them
    release: tuple[str, ...]
    #: the full target assignment it computed (for status and logs)
    targets: dict[str, str]


def plan_moves(
    keys: Iterable[str],
    members: Sequence[MemberAge],
    holders: Mapping[str, str],
    me: str,
    *,
    settle: float,
    max_releases: int = 1,
) -> Moves:
    """This member's moves, given the live members and who holds which live lease now.

    ``holders`` maps a key to the member holding its (unexpired) lease; holders that are
    not live members are ignored. Only settled members (alive for ``settle`` seconds;
    everyone alive when nobody is) are targets.
    """
    live = {member.member_id for member in members}
    settled = [m.member_id for m in members if m.alive_for >= settle] or sorted(live)
    current = {key: holder for key, holder in holders.items() if holder in live}
    targets = assign(keys, settled, current)
    acquire = tuple(
        sorted(key for key, target in targets.items() if target == me and key not in current)
    )
    giving = sorted(
        (key for key, holder in current.items() if holder == me and targets.get(key) != me),
        key=lambda k: (-rank(k, me), k),
    )
    return Moves(acquire, tuple(giving[: max(0, max_releases)]), targets)

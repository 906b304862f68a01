"""The reconciler's incremental replanning gives what a full replan gives.

A change replans only the changed link's extension (the index key -> link ids); these
tests drive one reconciler through random sequences of changes (links read, not yet
read, moved to another extension or PBX, removed; time moving past boundaries) and
after every pass compare it with a fresh reconciler that is given only the links as they
are now and plans everything at once: the plans, the desired state, what each PBX holds
afterwards (from the same starting state) and the next boundary of every extension must
be the same.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pbxcal.core.ical import EventInstance
from pbxcal.core.policy import NumberPolicy
from pbxcal.service import reconciler as reconciler_module
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import Key, LinkInstances, Reconciler
from pbxcal.testing.fakes import FakeClock, FakePbx

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
PBXES = ("a", "b")
EXTENSIONS = tuple(str(100 + i) for i in range(6))
TARGETS = ("0612345678", "0201234567", "+31612345679", "101", "104", "no number")
#: A link is either read (its instances) or not yet read (its key only).
Model = dict[int, LinkInstances | Key]


def reconciler(clock: FakeClock, states: dict[str, dict[str, tuple[str, ...]]]) -> Reconciler:
    pbxes = {
        name: FakePbx(name, state=states.get(name, {}), extensions=EXTENSIONS) for name in PBXES
    }
    return Reconciler(pbxes, NumberPolicy.default("NL"), clock, Metrics(), tick_interval=3600.0)


def random_link(rng: random.Random, uid: str) -> LinkInstances:
    key = (rng.choice(PBXES), rng.choice(EXTENSIONS))
    instances = []
    for k in range(rng.randint(0, 4)):
        start = T0 + timedelta(minutes=rng.randint(-90, 600))
        end = start + timedelta(minutes=rng.randint(5, 120))
        instances.append(EventInstance(f"{uid}-{k}", start, end, rng.choice(TARGETS)))
    since = T0 - timedelta(days=2)
    return LinkInstances(key, tuple(instances), since, since + timedelta(days=30))


def give(rec: Reconciler, model: Model) -> None:
    for link_id, link in model.items():
        if isinstance(link, LinkInstances):
            rec.set_link_instances(link_id, link)
        else:
            rec.set_link_unknown(link_id, link)


def pbx_state(rec: Reconciler, name: str) -> dict[str, tuple[str, ...]]:
    pbx = rec.pbxes[name]
    assert isinstance(pbx, FakePbx)
    return dict(pbx.state)


def next_boundaries(rec: Reconciler, keys: set[Key]) -> set[tuple[datetime, str, str]]:
    now = rec.clock.now()
    found = set()
    for key in keys:
        plan = rec.plan_for(key)
        moment = plan.next_boundary_after(now) if plan is not None else None
        if moment is not None:
            found.add((moment, *key))
    return found


async def compare_with_full(rec: Reconciler, model: Model, clock: FakeClock) -> None:
    """One pass of ``rec``; a fresh reconciler given ``model`` must end the same."""
    before = {name: pbx_state(rec, name) for name in PBXES}
    full = reconciler(FakeClock(clock.now()), before)
    give(full, model)
    await rec._step()
    await full._step()
    keys = {(p, e) for p in PBXES for e in EXTENSIONS}
    for key in keys:
        assert rec.plan_for(key) == full.plan_for(key), key
    for name in PBXES:
        assert rec.desired_state(name) == full.desired_state(name), name
        assert pbx_state(rec, name) == pbx_state(full, name), name
    # every extension's next boundary is held in the heap (stale extra entries are
    # harmless: serving one only recomputes that extension)
    assert next_boundaries(full, keys) <= rec._boundary_set
    assert rec.unknown_links == full.unknown_links


@pytest.mark.parametrize("seed", range(25))
async def test_incremental_replans_equal_a_full_replan(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(T0)
    rec = reconciler(clock, {})
    model: Model = {}
    for op in range(60):
        link_id = rng.randrange(20)
        choice = rng.random()
        if choice < 0.5:
            link = random_link(rng, f"s{seed}-o{op}")
            model[link_id] = link
            rec.set_link_instances(link_id, link)
        elif choice < 0.65:
            key = (rng.choice(PBXES), rng.choice(EXTENSIONS))
            current = model.get(link_id)
            if not isinstance(current, LinkInstances):  # a read link stays as it was
                model[link_id] = key
            rec.set_link_unknown(link_id, key)
        elif choice < 0.8:
            model.pop(link_id, None)
            rec.remove_link(link_id)
        else:
            clock.advance(timedelta(minutes=rng.randint(1, 90)))
        if rng.random() < 0.6:
            await compare_with_full(rec, model, clock)
    await compare_with_full(rec, model, clock)


async def test_a_change_replans_only_its_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of a change does not grow with the number of links: only the changed
    link's extension is planned again, whatever else is linked."""
    clock = FakeClock(T0)
    rec = reconciler(clock, {})
    rng = random.Random(7)
    for link_id in range(600):
        rec.set_link_instances(link_id, random_link(rng, f"l{link_id}"))
    await rec._step()
    planned: list[Key] = []
    plan_keys = reconciler_module._plan_keys

    def counting(items: list[tuple[Key, list[tuple[EventInstance, ...]]]], *args: Any) -> Any:
        planned.extend(key for key, _ in items)
        return plan_keys(items, *args)

    monkeypatch.setattr(reconciler_module, "_plan_keys", counting)
    changed = rec.link_instances(5)
    assert changed is not None
    rec.set_link_instances(5, LinkInstances(changed.key, (), changed.since, changed.until))
    await rec._step()
    assert planned == [changed.key]
    # and the plan is the one a full replan makes
    full = reconciler(FakeClock(clock.now()), {})
    for link_id in range(600):
        link = rec.link_instances(link_id)
        assert link is not None
        full.set_link_instances(link_id, link)
    await full._step()
    assert rec.plan_for(changed.key) == full.plan_for(changed.key)

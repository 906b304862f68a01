"""Saved expansions: each link's expanded instances, so a restart needs no parsing.

What it does: keeps one row per link (``save_expansion`` overwrites it) holding the
range the calendar was expanded over, when, and the instances in a compact JSON text
(``encode`` / ``decode``), and loads every link's record in one query
(``load_expansions()``; 10,000 links x 20 instances decode in well under a second, see
``bench/bench_store.py``) or only the links named (``load_expansions(ids)``, what another
process's change costs). ``expansion_computed_at`` reads only when each record was
computed (no instances), so a periodic comparison loads only the records that changed.
Removing a link removes its row (``links._delete_links`` and the foreign key).

The encoding (version 1)::

    {"v": 1, "s": [strings...], "i": [[uid, title, flags, start, end], ...]}

``uid`` and ``title`` index into ``s`` (recurring events repeat both), ``flags`` is
bit 0 transparent, bit 1 all-day, ``start`` / ``end`` are epoch seconds (an int, or
``"seconds.micros"`` text when not whole; ``times``).

What it must not do: decide whether a record is still valid (the daemon compares its
range and ``computed_at`` with its own horizon), or accept naive times.

Start reading at ``ExpansionTable.save_expansion``, then ``encode``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select

from pbxcal.core.ical import EventInstance
from pbxcal.errors import StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database, upsert
from pbxcal.store.links import require_link
from pbxcal.store.records import ExpansionRecord
from pbxcal.store.times import from_epoch, require_utc, to_epoch

ENCODING_VERSION = 1
_TRANSPARENT = 1
_ALL_DAY = 2
_FLAG_PAIRS = ((False, False), (True, False), (False, True), (True, True))


class ExpansionTable:
    """The expansion calls of ``Store`` (a mixin; ``_db`` is set by ``Store``)."""

    _db: Database

    def save_expansion(self, link_id: int, record: ExpansionRecord) -> None:
        """Keep ``record`` as the link's expansion, replacing the previous one."""
        row = expansion_row(link_id, record)
        with self._db.transaction(write=True) as conn:
            require_link(conn, link_id)
            upsert(conn, db.expansions, [row], keys=["link_id"])

    def load_expansions(
        self, link_ids: Collection[int] | None = None
    ) -> dict[int, ExpansionRecord]:
        """Every link's saved expansion, or only those of ``link_ids`` (links without
        one are absent). One query (per ``ID_CHUNK`` ids)."""
        with self._db.transaction() as conn:
            if link_ids is None:
                rows = conn.execute(select(db.expansions)).all()
            else:
                rows = [
                    row
                    for chunk in id_chunks(link_ids)
                    for row in conn.execute(
                        select(db.expansions).where(db.expansions.c.link_id.in_(chunk))
                    )
                ]
        result: dict[int, ExpansionRecord] = {}
        times: dict[Any, datetime] = {}
        # Hundreds of thousands of new objects, all kept, none in a cycle: without this
        # the cyclic collector runs over the growing heap again and again (2-3x slower).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for row in rows:
                result[row.link_id] = ExpansionRecord(
                    range_start=row.range_start,
                    range_end=row.range_end,
                    instances=decode(row.instances, row.link_id, times),
                    computed_at=row.computed_at,
                )
        finally:
            if collecting:
                gc.enable()
        return result

    def expansion_computed_at(self, link_ids: Collection[int] | None = None) -> dict[int, datetime]:
        """When each link's saved expansion was computed, of every link or only of
        ``link_ids`` (no instances read; absent: none saved). One query (per chunk)."""
        c = db.expansions.c
        query = select(c.link_id, c.computed_at)
        with self._db.transaction() as conn:
            if link_ids is None:
                return {r.link_id: r.computed_at for r in conn.execute(query)}
            return {
                r.link_id: r.computed_at
                for chunk in id_chunks(link_ids)
                for r in conn.execute(query.where(c.link_id.in_(chunk)))
            }


#: Ids per ``IN (...)`` list (SQLite allows 32,766 bound values, psycopg 65,535).
ID_CHUNK = 5000


def id_chunks(ids: Collection[int]) -> Iterator[list[int]]:
    """``ids`` in sorted lists of at most ``ID_CHUNK`` (for ``IN`` lists)."""
    ordered = sorted(ids)
    for offset in range(0, len(ordered), ID_CHUNK):
        yield ordered[offset : offset + ID_CHUNK]


def expansion_row(link_id: int, record: ExpansionRecord) -> dict[str, Any]:
    """The ``expansions`` row for ``record``; ``ValueError`` for a naive time."""
    for value, what in (
        (record.range_start, "expansion range_start"),
        (record.range_end, "expansion range_end"),
        (record.computed_at, "expansion computed_at"),
    ):
        require_utc(value, what)
    return {
        "link_id": link_id,
        "range_start": record.range_start,
        "range_end": record.range_end,
        "computed_at": record.computed_at,
        "instances": encode(record.instances),
    }


def encode(instances: tuple[EventInstance, ...]) -> str:
    """The compact JSON text of ``instances`` (see the module docstring)."""
    strings: dict[str, int] = {}
    rows: list[list[Any]] = []
    for instance in instances:
        uid = strings.setdefault(instance.uid, len(strings))
        title = strings.setdefault(instance.title, len(strings))
        flags = (_TRANSPARENT if instance.transparent else 0) | (
            _ALL_DAY if instance.all_day else 0
        )
        start = to_epoch(instance.start, f"start of instance {instance.uid}")
        end = to_epoch(instance.end, f"end of instance {instance.uid}")
        rows.append([uid, title, flags, start, end])
    document = {"v": ENCODING_VERSION, "s": list(strings), "i": rows}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def decode(
    text: str, link_id: int = 0, times: dict[Any, datetime] | None = None
) -> tuple[EventInstance, ...]:
    """The instances encoded by ``encode``; ``StoreError`` for text it did not write.

    ``times`` memoises epoch -> datetime across calls (one load shares it: calendars
    mostly start and end on the same round hours), which halves the decoding time.
    """
    memo: dict[Any, datetime] = {} if times is None else times
    instance = EventInstance
    flag_pairs = _FLAG_PAIRS
    try:
        document = json.loads(text)
        if document["v"] != ENCODING_VERSION:
            raise ValueError(f"encoding version {document['v']!r}")
        strings = document["s"]
        result: list[EventInstance] = []
        append = result.append
        for uid, title, flags, start, end in document["i"]:
            begins = memo.get(start)
            if begins is None:
                begins = memo[start] = from_epoch(start)
            ends = memo.get(end)
            if ends is None:
                ends = memo[end] = from_epoch(end)
            transparent, all_day = flag_pairs[flags]
            append(instance(strings[uid], begins, ends, strings[title], transparent, all_day))
        return tuple(result)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise StoreError(
            f"saved expansion of link {link_id} cannot be read ({type(exc).__name__})"
        ) from None

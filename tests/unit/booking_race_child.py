"""Child process for the neighbouring-slots race (``test_booking_buffers.py``,
``tests/integration/test_booking_postgres.py``): one guest booking through the real
``pbxcal.booking.service.book``, held at the database's door until the parent says go.

Run as ``python booking_race_child.py``; reads one JSON line from stdin (``store``: the
store URL, ``key_file``, ``agent``, ``start``: ISO, ``guest``), never from argv (the
URL may hold a password). It opens the store, books with a ``WebContext`` without a
daemon (no fresh sync: what is stored counts; the write-back is the agent's real booking
calendar), and just before the booking row is inserted — after the service's own check
of the slot — prints ``ready`` and waits for a ``go`` line. So two children pass the
check while neither row exists, and only the database can refuse one of them. Last it
prints ``booked <uid>``, or ``taken <message>`` for ``SlotTaken``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from pbxcal.booking import SlotTaken, book
from pbxcal.config import Config
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.store import Store, load_key_ring
from pbxcal.web import WebContext
from pbxcal.web.i18n import Templates


def main() -> None:
    order = json.loads(sys.stdin.readline())
    store = Store.open(order["store"], keys=load_key_ring(order["key_file"], None))
    insert = store.insert_booking

    def at_the_door(values: Any) -> int:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go from the parent")
        return insert(values)

    store.insert_booking = at_the_door  # type: ignore[method-assign]
    ctx = WebContext(config=Config(), store=store, keys=None, sync=None, clock=SystemClock(),
                     metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip
    try:
        guest = order["guest"]
        start = datetime.fromisoformat(order["start"])
        booking = book(ctx, order["agent"], start=start, duration_minutes=30, subject="Race",
                       guest_name=guest, guest_email=f"{guest}@example.org")  # fmt: skip
        booked = asyncio.run(booking)
    except SlotTaken as exc:
        print(f"taken {exc}", flush=True)
    else:
        print(f"booked {booked.uid}", flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main()

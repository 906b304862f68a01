"""The pure core of pbxcal: no I/O, no clock, no asyncio.

Everything here takes plain values (``now`` is always an argument) and returns plain
values, so it is tested with tables and hypothesis. Start reading at:

* ``targets.parse_title`` – a calendar title becomes a forwarding target or a rejection;
* ``policy.NumberPolicy`` – the toll-fraud rules applied to every external number;
* ``ical.expand_calendar`` – iCalendar data becomes concrete event instances in a range;
* ``windows.plan_windows`` – event instances become non-overlapping forwarding windows;
* ``slots.free_slots`` – busy time and working hours become bookable slots.
"""

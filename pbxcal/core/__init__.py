"""The pure core of pbxcal: no I/O, no clock, no asyncio.

Everything here takes plain values (``now`` is always an argument) and returns plain
values, so it is tested with tables and hypothesis. Start reading at:

* ``targets.parse_title`` – a calendar title becomes a forwarding target or a rejection
  (``targets.TitleParser`` memoises it per policy and PBX's known extensions);
* ``wire`` – the one syntax a target has on the AMI wire (a ``Target`` checks itself);
* ``policy.NumberPolicy`` – the toll-fraud rules applied to every external number;
* ``ical.expand_calendar`` – iCalendar data becomes concrete event instances in a range,
  with bounded work (``ical.ExpansionLimits``); one event is read in ``vevent``,
  repeat rules are costed and expanded lazily in ``recurrence``;
* ``windows.plan_windows`` – event instances become non-overlapping forwarding windows;
* ``slots.free_slots`` – busy time and working hours become bookable slots.
"""

"""The daemon (``pbxcal run``): the imperative shell around the pure core.

Start reading at ``daemon.Daemon.run`` (start-up order, READY, shutdown), then
``reconciler.Reconciler`` (desired vs applied state, the boundary timer), then
``sync.CalendarSync`` (reading the calendars). ``metrics.py`` defines every Prometheus
metric, ``http.py`` serves /metrics, /healthz and /readyz, ``notify.py`` speaks
sd_notify, ``logs.py`` sets up journald-friendly logging.
"""

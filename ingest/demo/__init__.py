"""``ingest demo``: the whole pipeline on this machine, with nothing configured.

An embedded redis-server and the sandbox API start on free loopback ports; a burst of sample
payments (new, renewals, refunds, a free trial, re-sent duplicates, a few the API refuses and
a few invalid ones rejected at enqueue) goes through real worker processes; a table shows
where every event ended up, counted by transaction id. With ``chaos`` the same run goes on
while the API answers 5xx and 429s, a worker is SIGKILLed and redis-server is killed and
restarted (:mod:`.chaos`). Everything it started is stopped and removed at the end.

:mod:`.samples` the sample payments, :mod:`.stack` what a run starts and the count,
:mod:`.chaos` the faults, :mod:`.report` the output, :mod:`.run` one run top to bottom.
"""

from .run import DEFAULT_CHAOS_EVENTS, DEFAULT_EVENTS, DemoOptions, run_demo

__all__ = ["DEFAULT_CHAOS_EVENTS", "DEFAULT_EVENTS", "DemoOptions", "run_demo"]

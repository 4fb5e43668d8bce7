"""``python -m harness``. Its first lines, before any slow import: the stop signals are caught
(:mod:`harness.cluster.stop`), and a ``run`` gets its watchdog (:mod:`harness.cluster.watchdog`),
so that a stop request or a kill in the first second of a start is handled like one later on."""

import sys

from harness.cluster import stop, watchdog

stop.install()
if sys.argv[1:2] in (["run"], ["bench"], ["calibrate"]):
    watchdog.guard()

from harness.cli import main  # noqa: E402  (after the guards: this import takes seconds)

code = main()
stop.done()  # a stop asked for during the interpreter's teardown (Ray's shutdown: seconds) has nothing left to stop
sys.exit(code)

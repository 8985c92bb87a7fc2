"""The phase hook: a run marks where it is (loading, indexing, auditing, attached, flipping), and the crash tests
stop it there to kill it. Unset in normal use, it only logs the phase at debug level."""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("pipeline")

#: ``PIPELINE_PAUSE_AT=phase[:seconds]`` stops a run at a phase (loading, indexing, auditing,
#: attached, flipping), or ``gc`` before it drops tables (retiring): the crash and race tests stop it
#: there. Unset in normal use.
PAUSE_ENV = "PIPELINE_PAUSE_AT"


def checkpoint(phase: str) -> None:
    """Mark the start of a run's phase; pause there when ``$PIPELINE_PAUSE_AT`` asks for it."""
    log.debug("phase: %s", phase)
    wanted, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted == phase:
        print(f"pipeline: paused at {phase} (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 3600))

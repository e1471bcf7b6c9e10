"""Settings of benchmarks/backfill.py: the demo site's, with the sets of the benchmark's phase.

`BACKFILL_SETS` (JSON) replaces the demo's SETS, and Photo.image uses every set in it: the
benchmark restarts its worker with a set that gained a spec, as a site deploys one.
"""

from __future__ import annotations

import json
import os

from rendition_worker.demo.settings import *  # noqa: F403  # the demo's, changed below
from rendition_worker.demo.settings import RENDITION_WORKER

_sets = json.loads(os.environ["BACKFILL_SETS"])
RENDITION_WORKER = {
    **RENDITION_WORKER,
    "SETS": _sets,
    "FIELDS": {"demo.Photo.image": list(_sets)},
}

"""Diagnostics: drive a Client against a Server and report where the time goes.

`run_diagnose(Settings(...), tick)` measures and returns plain JSON data; `render(data)`
builds the markdown report and `write_charts(data, dir)` the PNG charts from that data alone,
so a recorded JSON file gives the same report.
"""

from ._charts import write_charts
from ._findings import findings
from ._local import local_server, seed_server
from ._progress import progress
from ._report import render
from ._run import TRANSPORTS, Settings, run_diagnose
from ._seed_client import SeedClient
from ._sizes import format_size, parse_size, parse_sizes
from ._stages import SEED_STAGES, StageRow, measure, percentile
from ._workload import seed_inputs

__all__ = [
    "SEED_STAGES",
    "SeedClient",
    "TRANSPORTS",
    "Settings",
    "StageRow",
    "findings",
    "format_size",
    "local_server",
    "measure",
    "parse_size",
    "parse_sizes",
    "percentile",
    "progress",
    "render",
    "run_diagnose",
    "seed_inputs",
    "seed_server",
    "write_charts",
]

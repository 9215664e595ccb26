"""Diagnostics: drive a Client against a Server and report where the time goes."""

from ._local import local_server
from ._quick import render, run_quick, write_json
from ._stages import SEED_STAGES, StageRow, measure

__all__ = ["SEED_STAGES", "StageRow", "local_server", "measure", "render", "run_quick", "write_json"]

"""`tensorwire precision`: what a wire precision policy does to numbers, beside the bounds."""

from ._report import FORMULAS, Report, element_stats, render, run, seed_workload, write_json

__all__ = ["FORMULAS", "Report", "element_stats", "render", "run", "seed_workload", "write_json"]

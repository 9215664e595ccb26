"""Reading the per-request logs the chaos workers write (see _worker.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Line:
    index: int
    token: int
    outcome: str
    seconds: float
    end: float


@dataclass
class Tally:
    lines: list[Line] = field(default_factory=list)

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(line.outcome for line in self.lines if line.index >= 0)

    @property
    def requests(self) -> int:
        return sum(1 for line in self.lines if line.index >= 0)


def read(path: Path) -> list[Line]:
    """Whole lines only: a worker killed mid-write may leave a torn last line."""
    lines = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return lines
    for raw in text.split("\n")[:-1]:  # the part after the last newline is torn or empty
        parts = raw.split()
        if len(parts) != 5:
            continue
        try:
            lines.append(Line(int(parts[0]), int(parts[1]), parts[2], float(parts[3]),
                              float(parts[4])))
        except ValueError:
            continue
    return lines


def completed(path: Path) -> int:
    return sum(1 for line in read(path) if line.index >= 0)

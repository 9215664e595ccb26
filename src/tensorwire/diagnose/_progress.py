"""A progress bar on stderr while measuring: rich when installed and on a terminal, else lines."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress(total: int, title: str = "measuring") -> Iterator[Callable[[str], None]]:
    """Yield tick(description): call it as each of `total` steps starts."""
    bar = _rich_bar(total, title) if sys.stderr.isatty() else None
    if bar is None:
        yield _plain_ticker(total)
        return
    prog, task = bar
    started = False

    def tick(description: str) -> None:
        nonlocal started
        if started:
            prog.advance(task)
        started = True
        prog.update(task, description=description)

    with prog:
        yield tick
        prog.update(task, completed=total, description="done")


def _rich_bar(total: int, title: str) -> tuple[Any, Any] | None:
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return None
    prog = Progress(
        TextColumn("{task.description:<45}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    return prog, prog.add_task(title, total=total)


def _plain_ticker(total: int) -> Callable[[str], None]:
    count = 0

    def tick(description: str) -> None:
        nonlocal count
        count += 1
        print(f"[{count}/{total}] {description}", file=sys.stderr, flush=True)

    return tick

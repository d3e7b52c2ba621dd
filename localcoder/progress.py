"""Rich progress bars for long work (conversion, quantization, downloads, benchmarks)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

console = Console(stderr=True)


class ItemProgress:
    """Progress over items (tensors, files) that each carry bytes: `start(name)` then `advance(n_bytes)`."""

    def __init__(self, progress: Progress | None, task, n_items: int):
        self._progress, self._task, self._n_items, self._done = progress, task, n_items, 0

    def start(self, name: str) -> None:
        self._done += 1
        if self._progress is not None:
            self._progress.update(self._task, item=f"{self._done}/{self._n_items} {name}")

    def advance(self, n_bytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n_bytes)


@contextmanager
def item_progress(label: str, n_items: int, total: int, enabled: bool = True,
                  count_bytes: bool = True) -> Iterator[ItemProgress]:
    """A bar over `total` bytes (or plain units when count_bytes is False): items done, rate, time left."""
    if not enabled:
        yield ItemProgress(None, None, n_items)
        return
    amount = (DownloadColumn(), TransferSpeedColumn()) if count_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), *amount, TimeRemainingColumn(),
               TextColumn("{task.fields[item]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=total, item="")
        yield ItemProgress(progress, task, n_items)

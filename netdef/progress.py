"""Progress bars on stderr: the one helper every long-running command uses.

    from netdef.progress import progress_bar, write

    with progress_bar(total=len(images), desc="run", unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
            write("note: ...")       # printed above the bar, not through it

A bar is a ``tqdm`` bar on stderr with count, rate and ETA. It is drawn only
when it helps: ``enabled=None`` (the default) shows it when stderr is a
terminal, ``True`` forces it (``netdef run --progress``), ``False`` hides it
(``--quiet``); ``NETDEF_NO_PROGRESS=1`` hides every bar. A hidden bar is
still a full tqdm object whose methods do nothing, so callers never branch
on it. ``run``, ``time``, ``warmup``, the first-run kernel compilation
notice, ``train`` and the data tools all go through here.
"""
from __future__ import annotations

import os
import sys

__all__ = ["progress_bar", "write", "bars_enabled"]


def bars_enabled(enabled: bool | None = None, stream=None) -> bool:
    """Whether a bar asked for with ``enabled`` is drawn on ``stream`` (stderr)."""
    if os.environ.get("NETDEF_NO_PROGRESS", "") not in ("", "0"):
        return False
    if enabled is not None:
        return bool(enabled)
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):     # closed or not a real file
        return False


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", initial: int = 0, enabled: bool | None = None,
                 leave: bool = False, stream=None, **kwargs):
    """A tqdm bar on stderr (rate and ETA), drawn only when ``bars_enabled``.

    ``total=None`` gives a counter with a rate but no ETA. Extra keyword
    arguments go to tqdm. ``leave=False`` removes the bar when it closes,
    so the terminal keeps only the results and log lines.
    """
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                leave=leave, dynamic_ncols=True, disable=not bars_enabled(enabled, stream),
                **kwargs)


def write(text: str, stream=None) -> None:
    """Print a line on stderr without tearing an open bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr if stream is None else stream)

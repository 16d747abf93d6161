"""What ``netdef train`` shows on the terminal: log lines and a progress bar.

``TrainConsole`` is a solver ``log`` function and a solver callback at
once. Log lines go to stderr (through tqdm, so they do not tear the bar);
the bar counts iterations with rate and ETA, and shows the latest smoothed
loss and lr. ``quiet`` keeps only notes and warnings and drops the bar.
The bar is netdef.progress's (drawn only on a terminal; NETDEF_NO_PROGRESS=1
hides it), with a plain tqdm fallback.
"""
from __future__ import annotations

import sys


def _make_bar(total: int, initial: int, stream):
    try:
        from netdef.progress import progress_bar  # the shared helper, when present
    except ImportError:
        progress_bar = None
    if progress_bar is not None:
        return progress_bar(total=total, initial=initial, unit="it", desc="train",
                            stream=stream)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="it", desc="train", file=stream,
                dynamic_ncols=True, leave=False, disable=None)


class TrainConsole:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.bar = None

    def log(self, line: str) -> None:
        if self.quiet and not line.startswith(("note:", "warning:")):
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start" and not self.quiet and event["stop"] > event["start"]:
            self.close()
            self.bar = _make_bar(event["stop"], event["start"], self.stream)
        elif kind == "iteration" and self.bar is not None:
            self.bar.update(event["iter"] - self.bar.n)
        elif kind == "train" and self.bar is not None:
            self.bar.set_postfix(loss=f"{event['loss']:.4g}", lr=f"{event['lr']:.3g}",
                                 refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""The machine-readable training log, and reading logs back for plot-log.

``LogWriter(path)`` is a solver callback. It writes one record per display
iteration (train: smoothed loss, raw loss, lr, outputs) and per test (mean
scores). The format follows the file name:

* ``.csv``: long format, one value per row:
  ``iteration,seconds,phase,net,name,kind,value`` (kind: loss, score or lr);
* anything else: JSON lines, one object per record:
  ``{"phase": "train", "iter": 100, "seconds": 1.9, "loss": 0.25, "raw_loss": 0.3,
  "lr": 0.01, "outputs": {...}}`` and
  ``{"phase": "test", "iter": 500, "seconds": 9.4, "net": 0, "scores": {"accuracy": 0.98,
  "loss": 0.05}, "losses": ["loss"]}``.

Records are flushed as they are written, so a crashed run keeps its log.
``read_log`` reads either format, and also Caffe's (or netdef's) text log
lines ("Iteration 100 ..., loss = 0.25", "Test net output #0: accuracy = ...").
"""
from __future__ import annotations

import csv
import json
import re
import time

from netdef.errors import InputError

CSV_COLUMNS = ("iteration", "seconds", "phase", "net", "name", "kind", "value")


class LogWriter:
    """Solver callback writing train/test records to ``path`` (see module doc)."""

    def __init__(self, path, append: bool = False):
        self.path = str(path)
        self.csv = self.path.lower().endswith(".csv")
        self._file = open(self.path, "a" if append else "w", encoding="utf-8", newline="")
        self._start = time.perf_counter()
        self._writer = csv.writer(self._file) if self.csv else None
        if self.csv and self._file.tell() == 0:
            self._writer.writerow(CSV_COLUMNS)

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind not in ("train", "test"):
            return
        seconds = round(time.perf_counter() - self._start, 3)
        if kind == "train":
            record = {"phase": "train", "iter": event["iter"], "seconds": seconds,
                      "loss": event["loss"], "raw_loss": event["raw_loss"], "lr": event["lr"],
                      "outputs": event.get("outputs") or {}}
        else:
            losses = [k for k, v in (event.get("loss_weights") or {}).items() if v]
            record = {"phase": "test", "iter": event["iter"], "seconds": seconds,
                      "net": event["net"], "scores": event["scores"], "losses": losses}
            if event.get("loss") is not None:
                record["loss"] = event["loss"]
        if self.csv:
            for row in _csv_rows(record):
                self._writer.writerow(row)
        else:
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _csv_rows(r: dict):
    it, sec = r["iter"], r["seconds"]
    if r["phase"] == "train":
        yield it, sec, "train", "", "loss", "loss", r["loss"]
        yield it, sec, "train", "", "raw_loss", "loss", r["raw_loss"]
        yield it, sec, "train", "", "lr", "lr", r["lr"]
        for name, value in r["outputs"].items():
            yield it, sec, "train", "", f"output:{name}", "score", value
    else:
        for name, value in r["scores"].items():
            kind = "loss" if name in r["losses"] else "score"
            yield it, sec, "test", r["net"], name, kind, value


# ----------------------------------------------------------------- reading ---
def read_log(path) -> dict:
    """{"train_loss": [(iter, v)], "lr": [(iter, v)], "test": {(net, name): [(iter, v)]},
    "test_losses": {(net, name)}} from a JSON-lines, CSV or text log."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise InputError(f"cannot read the log: {exc.strerror or exc}", where=str(path)) from None
    out = {"train_loss": [], "lr": [], "test": {}, "test_losses": set()}
    first = text.lstrip()[:1]
    if first == "{":
        _read_jsonl(text, out, str(path))
    elif text.startswith(",".join(CSV_COLUMNS)):
        _read_csv(text, out)
    else:
        _read_text(text, out)
    if not out["train_loss"] and not out["test"]:
        raise InputError("no training records found in the log", where=str(path),
                         hint="give a --log-file written by netdef train (.jsonl or .csv), "
                              "or a Caffe/netdef text log")
    return out


def _read_jsonl(text: str, out: dict, where: str) -> None:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            raise InputError(f"line {n} is not JSON", where=where) from None
        if r.get("phase") == "train":
            out["train_loss"].append((r["iter"], r["loss"]))
            if r.get("lr") is not None:
                out["lr"].append((r["iter"], r["lr"]))
        elif r.get("phase") == "test":
            for name, value in r.get("scores", {}).items():
                out["test"].setdefault((r.get("net", 0), name), []).append((r["iter"], value))
            out["test_losses"].update((r.get("net", 0), name) for name in r.get("losses", ()))


def _read_csv(text: str, out: dict) -> None:
    for row in csv.DictReader(text.splitlines()):
        it, value = int(row["iteration"]), float(row["value"])
        if row["phase"] == "train":
            if row["name"] == "loss":
                out["train_loss"].append((it, value))
            elif row["name"] == "lr":
                out["lr"].append((it, value))
        elif row["phase"] == "test":
            key = (int(row["net"] or 0), row["name"])
            out["test"].setdefault(key, []).append((it, value))
            if row["kind"] == "loss":
                out["test_losses"].add(key)


_TRAIN = re.compile(r"Iteration (\d+)(?: \(.*?\))?, loss = ([-+0-9.eEinfa]+)")
_LR = re.compile(r"Iteration (\d+), lr = ([-+0-9.eE]+)")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_SCORE = re.compile(r"Test net output #\d+: (\S+) = ([-+0-9.eEinfa]+)( \(\*)?")


def _read_text(text: str, out: dict) -> None:
    it, net, seen = None, 0, set()
    for line in text.splitlines():
        if m := _TESTING.search(line):
            it, net, seen = int(m.group(1)), int(m.group(2)), set()
        elif m := _SCORE.search(line):
            if it is None:
                continue
            name = m.group(1)
            base, k = name, 1
            while name in seen:                 # repeated names: elements of one output
                k += 1
                name = f"{base}[{k - 1}]"
            seen.add(name)
            out["test"].setdefault((net, name), []).append((it, float(m.group(2))))
            if m.group(3):
                out["test_losses"].add((net, name))
        elif m := _LR.search(line):
            out["lr"].append((int(m.group(1)), float(m.group(2))))
        elif m := _TRAIN.search(line):
            out["train_loss"].append((int(m.group(1)), float(m.group(2))))

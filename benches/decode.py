"""`tmkt bench decode`: events per second of each event format's reader against tonic / expelliarmus.

Each format is read from a real sample file (the shared data folder's ``samples/``) by our reader
(``pipelines.formats.read_events``: header, checks, decode, sensor size) and by the library a tonic
user would call for it: ``expelliarmus.Wizard`` for Prophesee DAT / EVT 2.0 / EVT 3.0 (what tonic's
Prophesee datasets use), ``tonic.io.read_mnist_file`` for ATIS ``.bin``, ``tonic.io.read_aedat4`` for
AEDAT 4. Best of ``--repeats`` runs of each; the ratio is ours over theirs in events/s.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _theirs(kind: str) -> Callable[[Path], Any]:
    if kind in ("dat", "evt2", "evt3"):
        from expelliarmus import Wizard

        wizard = Wizard(encoding=kind)
        return lambda path: wizard.read(str(path))
    import tonic

    if kind == "atis":
        return lambda path: tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
    return lambda path: tonic.io.read_aedat4(str(path))


#: (format, sample file, the baseline's name)
SAMPLES = [
    ("evt2", "evt2_sample.raw", "expelliarmus Wizard(evt2)"),
    ("evt3", "evt3_sample.raw", "expelliarmus Wizard(evt3)"),
    ("dat", "sample_ncars.dat", "expelliarmus Wizard(dat)"),
    ("atis", "sample_nmnist.bin", "tonic.io.read_mnist_file"),
    ("aedat4", "sample.aedat4", "tonic.io.read_aedat4"),
]


def _best(read: Callable[[Path], Any], path: Path, repeats: int) -> tuple[int, float]:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        events = read(path)
        best = min(best, time.perf_counter() - started)
    return len(events), best


def run(samples: Path, repeats: int) -> dict[str, Any]:
    from pipelines.formats import read_events

    rows = {}
    for kind, name, baseline in SAMPLES:
        path = samples / name
        ours_n, ours_s = _best(lambda p: read_events(p)[0], path, repeats)
        theirs_n, theirs_s = _best(_theirs(kind), path, repeats)
        rows[kind] = {
            "file": name,
            "bytes": path.stat().st_size,
            "events": ours_n,
            "baseline_events": theirs_n,
            "ours_events_per_s": ours_n / ours_s,
            "baseline": baseline,
            "baseline_events_per_s": theirs_n / theirs_s,
            "ratio": (ours_n / ours_s) / (theirs_n / theirs_s),
        }
    return {"repeats": repeats, "formats": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt bench decode", description=__doc__)
    parser.add_argument("--samples", required=True, type=Path, help="the shared data folder's samples/")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=20, help="best of N runs of each reader")
    args = parser.parse_args(argv)
    result = run(args.samples, args.repeats)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    for kind, row in result["formats"].items():
        print(
            f"{kind:7s} {row['events']:>8d} events  ours {row['ours_events_per_s'] / 1e6:7.1f} M/s  "
            f"{row['baseline']} {row['baseline_events_per_s'] / 1e6:7.1f} M/s  ratio {row['ratio']:.2f}"
        )
    return 0

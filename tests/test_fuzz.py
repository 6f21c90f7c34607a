"""Seeded mutation fuzzing of every reader: each mutant is a clean ``BadInput`` or a valid result.

For each format, valid seed files come from the project's own writers (and from the shared real
samples when ``TMKT_REAL_DATA`` is set). Mutant ``i`` of a format is a pure function of the format's
name and ``i`` (bit flips, truncations, inserted and deleted bytes, header fields overwritten with
extreme values, numbers in text headers replaced), so a failure names a mutant anyone can rebuild.

One child process per format reads its mutants in a loop under an address-space limit and reports
each on its own line; the parent enforces a time limit per mutant and names the mutant in progress
if the child hangs or dies. ``pytest --fuzz N`` runs N mutants per format (default 50).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: address-space limit of a fuzzing child (imports take about 600 MB of it)
CHILD_AS_BYTES = 2 << 30
#: growth of the child's peak resident memory any one mutant may cause
MEMORY_BUDGET_MB = 300
#: seconds one mutant may take (the loaded 2-core CI machine included)
CASE_SECONDS = 20
EXTREMES = [
    b"\x00" * 4,
    b"\xff" * 4,
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x80",
    b"\x7f\xff\xff\xff",
    b"\xff" * 8,
]
TEXT_NUMBERS = [b"0", b"-1", b"70000", b"99999999999999999999", b"4294967296"]

# format -> (reader in pipelines.formats, file suffix)
FORMATS = {
    "nmnist": ("read_events", ".bin"),
    "aedat2": ("read_events", ".aedat"),
    "aedat31": ("read_events", ".aedat"),
    "aedat4": ("read_events", ".aedat4"),
    "prophesee_dat": ("read_events", ".dat"),
    "evt2": ("read_events", ".raw"),
    "evt3": ("read_events", ".raw"),
    "gesture_csv": ("read_gesture_labels", ".csv"),
    "idx": ("read_idx", ""),
    "idx_gz": ("read_idx", ".gz"),
    "cifar_batch": ("read_cifar_batch", ""),
    "cifar_meta": ("read_cifar_meta", ".meta"),
    "png": ("read_image", ".png"),
    "jpeg": ("read_image", ".jpg"),
}


def _events(n: int, width: int, height: int, max_t: int, seed: int) -> np.ndarray:
    from storage.schema import EVENT_DTYPE

    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["x"], events["y"] = rng.integers(0, width, n), rng.integers(0, height, n)
    events["t"], events["p"] = np.sort(rng.integers(0, max_t, n)), rng.integers(0, 2, n)
    return events


def _image_bytes(kind: str, shape: tuple[int, ...], seed: int) -> bytes:
    from PIL import Image

    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, kind, **({"quality": 80} if kind == "JPEG" else {}))
    return buffer.getvalue()


def seed_files(name: str, folder: Path) -> list[Path]:
    """Valid files of one format: written by the project's writers, plus real samples if present."""
    from pipelines import formats

    folder.mkdir(parents=True, exist_ok=True)
    suffix = FORMATS[name][1]
    paths: list[Path] = []

    def path(i: int) -> Path:
        paths.append(folder / f"seed{i}{suffix}")
        return paths[-1]

    if name == "nmnist":
        formats.write_nmnist(path(0), _events(300, 34, 34, 300_000, 0))
    elif name == "aedat2":
        formats.write_aedat2(path(0), _events(300, 128, 128, 10**6, 1))
        formats.write_aedat2(path(1), _events(200, 346, 260, 10**6, 2), (346, 260))
    elif name == "aedat31":
        formats.write_aedat31(path(0), _events(300, 128, 128, 2**31 + 10**6, 3))
    elif name == "aedat4":
        formats.write_aedat4(path(0), _events(5000, 34, 34, 10**6, 4), (34, 34))
        formats.write_aedat4(path(1), _events(300, 320, 240, 10**6, 5), (320, 240), compression="NONE")
    elif name == "prophesee_dat":
        ev = _events(300, 78, 42, 10**6, 6)
        records = np.zeros(len(ev), dtype=[("t", "<u4"), ("d", "<u4")])
        records["t"] = ev["t"]
        records["d"] = (
            ev["x"].astype(np.uint32) | (ev["y"].astype(np.uint32) << 14) | (ev["p"].astype(np.uint32) << 28)
        )
        path(0).write_bytes(b"% Width 78\n% Height 42\n" + bytes([0x0C, 0x08]) + records.tobytes())
    elif name == "evt2":
        ev = _events(300, 640, 480, 10**5, 7)
        words = []
        for high in np.unique(ev["t"] >> 6):
            words.append((0x8 << 28) | int(high))
            for e in ev[(ev["t"] >> 6) == high]:
                words.append(
                    (int(e["p"]) << 28) | ((int(e["t"]) & 63) << 22) | (int(e["x"]) << 11) | int(e["y"])
                )
        header = b"% evt 2.0\n% format EVT2;height=480;width=640\n% end\n"
        path(0).write_bytes(header + np.array(words, dtype="<u4").tobytes())
    elif name == "evt3":
        words = [0x8 << 12 | 2, 0x6 << 12 | 5, 0x0 << 12 | 100, 0x2 << 12 | 1 << 11 | 7]
        words += [0x3 << 12 | 20, 0x4 << 12 | 0b1000_0000_0101, 0x5 << 12 | 3, 0x6 << 12 | 9, 0x2 << 12 | 639]
        header = b"% evt 3.0\n% format EVT3;height=480;width=640\n% end\n"
        path(0).write_bytes(header + np.array(words * 20, dtype="<u2").tobytes())
    elif name == "gesture_csv":
        path(0).write_text("class,startTime_usec,endTime_usec\n1,100,2000\n11,2500,9000\n")
    elif name in ("idx", "idx_gz"):
        images = np.random.default_rng(8).integers(0, 256, (20, 28, 28), dtype=np.uint8)
        formats.write_idx(path(0), images)
        formats.write_idx(path(1), np.arange(20, dtype=np.uint8) % 10)
    elif name == "cifar_batch":
        images = np.random.default_rng(9).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        formats.write_cifar_batch(path(0), images, [0, 3, 9, 1])
    elif name == "cifar_meta":
        formats.write_cifar_meta(path(0), ["airplane", "automobile", "bird"])
    elif name == "png":
        path(0).write_bytes(_image_bytes("PNG", (40, 30), 10))
        path(1).write_bytes(_image_bytes("PNG", (24, 20, 3), 11))
    elif name == "jpeg":
        path(0).write_bytes(_image_bytes("JPEG", (48, 40, 3), 12))
    paths += _real_samples(name)
    return paths


def _real_samples(name: str) -> list[Path]:
    root = os.environ.get("TMKT_REAL_DATA")
    if not root:
        return []
    samples = Path(root) / "samples"
    wanted = {
        "nmnist": ["sample_nmnist.bin"],
        "aedat2": ["sample_aedat_header.aedat"],
        "aedat4": ["sample.aedat4"],
        "prophesee_dat": ["sample_ncars.dat"],
        "evt2": ["evt2_sample.raw"],
        "evt3": ["evt3_sample.raw"],
    }.get(name, [])
    return [samples / file for file in wanted if (samples / file).is_file()]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One seeded mutation of ``data`` and a description of it."""
    out = bytearray(data)
    kind = rng.integers(0, 6)
    head = min(len(out), 256)
    if kind == 0:  # bit flips, half of the time in the header region
        span = head if rng.random() < 0.5 else len(out)
        spots = [
            (int(rng.integers(0, span)), int(rng.integers(0, 8))) for _ in range(int(rng.integers(1, 9)))
        ]
        for at, bit in spots:
            out[at] ^= 1 << bit
        return bytes(out), f"flip bits {spots}"
    if kind == 1:
        cut = int(rng.integers(0, len(out)))
        return bytes(out[:cut]), f"truncate to {cut} bytes"
    if kind == 2:
        at, extra = (
            int(rng.integers(0, len(out) + 1)),
            rng.integers(0, 256, int(rng.integers(1, 17)), np.uint8),
        )
        return bytes(out[:at] + extra.tobytes() + out[at:]), f"insert {len(extra)} bytes at {at}"
    if kind == 3:
        at, count = int(rng.integers(0, len(out))), int(rng.integers(1, 17))
        return bytes(out[:at] + out[at + count :]), f"delete {count} bytes at {at}"
    if kind == 4:  # a header field (file header, or a packet header anywhere) set to an extreme value
        value = EXTREMES[int(rng.integers(0, len(EXTREMES)))]
        span = min(len(out), 128) if rng.random() < 0.5 else len(out)
        at = int(rng.integers(0, max(1, span - len(value) + 1)))
        at -= at % 4 if span > 128 else 0  # packet fields are 4-byte aligned
        out[at : at + len(value)] = value
        return bytes(out), f"overwrite {value.hex()} at {at}"
    numbers = [m.span() for m in re.finditer(rb"\d+", bytes(out[:1024]))]
    if not numbers:
        return mutate(data, rng)
    start, end = numbers[int(rng.integers(0, len(numbers)))]
    value = TEXT_NUMBERS[int(rng.integers(0, len(TEXT_NUMBERS)))]
    return bytes(out[:start] + value + out[end:]), f"text number at {start} -> {value.decode()}"


def make_mutant(name: str, seeds: list[Path], index: int, folder: Path) -> tuple[Path, str]:
    """Mutant ``index`` of format ``name``: deterministic in (name, index)."""
    rng = np.random.default_rng([sum(map(ord, name)), index])
    seed = seeds[index % len(seeds)]
    data = seed.read_bytes()
    if name == "idx_gz" and rng.random() < 0.5:  # mutate what is inside the compression too
        inner, how = mutate(gzip.decompress(data), rng)
        data, how = gzip.compress(inner, mtime=0), f"inside gzip: {how}"
    else:
        data, how = mutate(data, rng)
    path = folder / f"mutant{index:05d}{FORMATS[name][1]}"
    path.write_bytes(data)
    return path, f"{name} mutant {index} of {seed.name}: {how}"


def check_valid(reader: str, result: object) -> str:
    """Empty when ``result`` is a well-formed output of ``reader``, else what is wrong."""
    from pipelines.formats.images import DECODE_SIDE
    from storage.schema import EVENT_DTYPE

    if reader == "read_events":
        events, (width, height) = result
        if events.dtype != EVENT_DTYPE or not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
            return f"dtype {events.dtype}, sensor {width}x{height}"
        if len(events) and (
            events["x"].max() >= width or events["y"].max() >= height or events["p"].max() > 1
        ):
            return "events outside the sensor or polarity above 1"
        if len(events) and (events["t"].min() < 0 or np.any(np.diff(events["t"]) < 0)):
            return "negative or decreasing time stamps"
    elif reader == "read_image":
        if result.dtype != np.uint8 or result.ndim not in (2, 3) or min(result.shape[:2]) >= 2 * DECODE_SIDE:
            return f"image {result.dtype}{result.shape}"
    elif reader == "read_cifar_batch":
        images, labels = result
        if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or labels.shape != (len(images),):
            return f"images {images.dtype}{images.shape}, labels {labels.shape}"
    elif reader == "read_cifar_meta":
        if not all(isinstance(n, str) for n in result):
            return "names that are not str"
    elif reader == "read_idx":
        if not isinstance(result, np.ndarray):
            return type(result).__name__
    return ""


def child_main(name: str, folder: str, first: int, count: int) -> None:
    """Run in the child: read mutants ``first .. first+count-1`` and report each on one line."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_BYTES, CHILD_AS_BYTES))
    import aedat  # noqa: F401 - imported before the baseline, like every reader's dependencies
    import PIL.Image  # noqa: F401

    from pipelines import formats
    from pipelines.errors import BadInput

    reader_name = FORMATS[name][0]
    reader = getattr(formats, reader_name)
    work = Path(folder)
    seeds = seed_files(name, work / "seeds")
    for seed in seeds:  # the seeds themselves must read
        problem = check_valid(reader_name, reader(seed))
        assert not problem, f"seed {seed}: {problem}"
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for index in range(first, first + count):
        path, how = make_mutant(name, seeds, index, work)
        print(json.dumps({"start": index, "what": how, "path": str(path)}), flush=True)
        try:
            outcome = "invalid: " + problem if (problem := check_valid(reader_name, reader(path))) else "ok"
        except BadInput as err:
            outcome = "bad" if path.name in str(err) else f"BadInput not naming the file: {err}"
        except BaseException as err:  # what the fuzzing is for: anything else is a defect
            outcome = f"{type(err).__name__}: {str(err)[:300]}"
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
        print(json.dumps({"done": index, "outcome": outcome, "grown_mb": grown}), flush=True)
        if outcome in ("ok", "bad"):
            path.unlink()


def run_child(name: str, folder: Path, count: int) -> tuple[list[str], dict[str, int]]:
    """Run one format's mutants in a child; the list of defects found and the outcome counts."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    command = [
        sys.executable,
        "-c",
        f"import test_fuzz; test_fuzz.child_main({name!r}, {str(folder)!r}, 0, {count})",
    ]
    # stderr to a file: a pipe nobody reads while the loop runs could fill and stall the child
    log = open(folder / "child-stderr.log", "w+")  # noqa: SIM115 - closed in the finally below
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    defects, counts, current, reported = [], {"ok": 0, "bad": 0}, None, 0
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 120  # seeds and imports
    try:
        while True:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                what = current["what"] if current else "before the first mutant"
                defects.append(
                    f"hang: no answer within {CASE_SECONDS} s on {what} ({current and current['path']})"
                )
                break
            line = child.stdout.readline()
            if not line:
                break
            report = json.loads(line)
            if "start" in report:
                current, deadline = report, time.monotonic() + CASE_SECONDS
                continue
            outcome, reported = report["outcome"], reported + 1
            if outcome in counts:
                counts[outcome] += 1
            else:
                defects.append(f"{current['what']} ({current['path']}): {outcome}")
            if report["grown_mb"] > MEMORY_BUDGET_MB:
                defects.append(f"{current['what']}: peak memory grew {report['grown_mb']:.0f} MB")
            current = None
    finally:
        child.kill()
        child.communicate()
        selector.close()
        log.seek(0)
        stderr = log.read()
        log.close()
    if child.returncode not in (0, -9) or (current is not None and not defects):
        defects.append(
            f"child died ({child.returncode}) during {current and current['what']}: {stderr[-1500:]!r}"
        )
    if reported < count and not defects:
        defects.append(f"only {reported} of {count} mutants reported: {stderr[-1500:]!r}")
    return defects, counts


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_mutants_give_bad_input_or_valid_output(name, tmp_path, request):
    count = request.config.getoption("--fuzz")
    defects, counts = run_child(name, tmp_path, count)
    print(f"{name}: {count} mutants, {counts['ok']} valid, {counts['bad']} BadInput, {len(defects)} defects")
    assert not defects, "\n".join(defects)
    assert counts["ok"] + counts["bad"] == count
    assert counts["bad"] > 0  # the mutations do reach the readers' checks


def test_mutants_are_deterministic(tmp_path):
    seeds = seed_files("aedat4", tmp_path / "seeds")
    first = [make_mutant("aedat4", seeds, i, tmp_path)[0].read_bytes() for i in range(5)]
    again = [make_mutant("aedat4", seeds, i, tmp_path)[0].read_bytes() for i in range(5)]
    assert first == again and len(set(first)) == 5

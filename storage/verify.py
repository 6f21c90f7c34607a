"""Re-check a stored snapshot: content hashes of the data and of the raw inputs, and invariants."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zarr

from storage import layout
from storage.digests import array_pieces, arrays_below, check_array
from storage.reader import DatasetReader
from storage.repo import CorruptStore, read_error_line
from storage.schema import EVENT_DTYPE, SPLITS, FrameSpec

#: Events of whole recordings that verify holds at once, to digest them and check their invariants
#: (13 MB of the event fields; Zarr's read of them peaks at several times that). Verify's memory is
#: bounded by this, not by the dataset: on 30 M events, blocks of 8 M peaked 360 MB above an open
#: reader, of 1 M 115 MB, at about the same speed.
DIGEST_BLOCK_EVENTS = 1 << 20


def events_digest(events: np.ndarray) -> str:
    """Digest of one recording's events, field by field, independent of the in-memory layout."""
    return fields_digest({name: events[name] for name in EVENT_DTYPE.names})


def fields_digest(fields: dict[str, np.ndarray]) -> str:
    """`events_digest` of a recording given as one array per event field."""
    digest = hashlib.blake2b(digest_size=16)
    for name in EVENT_DTYPE.names:
        # the buffer itself, not a `tobytes` copy of it: a block's recording may be all of its events
        digest.update(np.ascontiguousarray(fields[name], dtype=EVENT_DTYPE[name]).view(np.uint8))
    return digest.hexdigest()


def recording_blocks(offsets: np.ndarray, events: int | None = None) -> Iterator[tuple[int, int]]:
    """``(first, last)`` ranges of whole recordings, in order, whose events fit ``events`` (the
    block, `DIGEST_BLOCK_EVENTS` by default; a longer recording is a block of its own): what verify
    holds at once, so that its memory is bounded by the block and not by the dataset."""
    limit = DIGEST_BLOCK_EVENTS if events is None else events
    first, n = 0, len(offsets) - 1
    while first < n:
        # the most recordings from `first` whose events fit the block (at least one)
        fit = int(np.searchsorted(offsets, offsets[first] + limit, side="right")) - 1
        last = min(max(first + 1, fit), n)
        yield first, last
        first = last


def recording_digests(reader: DatasetReader) -> Iterator[str]:
    """Every recording's `events_digest`, in order, from reads of whole blocks of recordings:
    reading each recording's fields on its own cost a Zarr call per field (milliseconds), minutes
    for a store of tens of thousands of recordings."""
    offsets = reader.offsets
    arrays = {name: reader.root[layout.EVENT_FIELDS[name]] for name in EVENT_DTYPE.names}
    for first, last in recording_blocks(offsets):
        base = int(offsets[first])
        block = {name: array[base : int(offsets[last])] for name, array in arrays.items()}
        for index in range(first, last):
            lo, hi = int(offsets[index]) - base, int(offsets[index + 1]) - base
            yield fields_digest({name: values[lo:hi] for name, values in block.items()})
        del block  # the next block is read before this one would be dropped


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a regular file's content; anything else raises `OSError` ("not a regular file").

    The file is opened without blocking and checked on the open descriptor, so that neither a FIFO
    (a plain open waits for a writer forever) nor a folder reached through a link loop (it fails
    only at the first read, as IsADirectoryError) is ever read, even if it replaced a regular file
    after a caller looked at it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    digest = hashlib.sha256()
    with handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_store(path: str | Path, snapshot: str | None = None, raw: str | Path | None = None) -> list[str]:
    """Every fault found, as one line each naming what is wrong; an empty list means healthy.

    Every array is compared with the digests its build recorded (so a flipped byte, a lost chunk or
    swapped labels anywhere fail, not only in events), then the invariants between arrays and the raw
    inputs are checked. A check that cannot even read what it needs reports that as a fault and the
    others still run: a corrupt store gets a list of faults, never a traceback.
    """
    try:
        reader = DatasetReader(path, snapshot)
    except CorruptStore as err:  # the snapshot itself is damaged: nothing else can be read
        return [str(err)]
    checks: dict[str, Callable[[], list[str]]] = {
        "digests": lambda: _check_digests(reader),
        "events": lambda: _check_events(reader),
        "frames": lambda: _check_frames(reader),
        "manifest": lambda: _check_manifest(reader, raw),
    }
    faults: list[str] = []
    for name, check in checks.items():
        try:
            faults += check()
        except Exception as err:  # an unreadable chunk or manifest is a fault to report, not a crash
            line = read_error_line(err)
            if not any(fault.endswith(line) for fault in faults):  # one fault per broken object
                faults.append(f"{name}: cannot be read or is malformed: {line}")
    return faults


def _check_digests(reader: DatasetReader) -> list[str]:
    records = reader.attrs.get(layout.DIGESTS)
    if not isinstance(records, dict):
        return ["digests: none recorded at build time (rebuild the store to make it verifiable)"]
    faults = []
    present = {array.path: array for array in arrays_below(reader.root)}
    for name in sorted(set(present) - set(records)):
        faults.append(f"{name}: array not written by the build (no digest recorded)")
    for name, record in sorted(records.items()):
        if name not in present:
            faults.append(f"{name}: array recorded at build time is missing")
            continue
        try:
            faults += check_array(name, present[name], record)
        except (KeyError, TypeError, ValueError) as err:
            faults.append(f"{name}: its digest record is corrupt ({type(err).__name__}: {err})")
    return faults


def _check_events(reader: DatasetReader) -> list[str]:
    faults = []
    offsets = reader.offsets
    n = reader.n_recordings
    lengths = {name: reader.root[layout.EVENT_FIELDS[name]].shape[0] for name in EVENT_DTYPE.names}
    ordered = _ordered(offsets)
    if not ordered:
        faults.append("events/offsets: not a non-decreasing sequence from 0")
    if any(length != offsets[-1] for length in lengths.values()):
        faults.append(f"events: array lengths {lengths} differ from offsets[-1]={offsets[-1]}")
        return faults
    if len(reader.labels) != n or np.any((reader.labels < 0) | (reader.labels >= len(reader.classes))):
        faults.append("events/label: length or class index out of range")
    if len(reader.splits) != n or np.any(reader.splits >= len(SPLITS)):
        faults.append("events/split: length or split code out of range")
    if not ordered:  # no recording's events can be told apart
        return faults
    outside = [index for first, last in recording_blocks(offsets) for index in _outside(reader, first, last)]
    for index in outside[:20]:
        faults.append(f"{reader.sources[index]}: events outside the sensor or polarity not 0/1")
    return faults


def _ordered(offsets: np.ndarray) -> bool:
    """Whether ``offsets`` cut the events into recordings: from 0, never decreasing."""
    return bool(len(offsets) and offsets[0] == 0 and not np.any(np.diff(offsets) < 0))


def _outside(reader: DatasetReader, first: int, last: int) -> np.ndarray:
    """The recordings in ``[first, last)`` with an event outside their sensor or a polarity above 1,
    from one read of their x, y and p and no array of the owner of each event (8 bytes an event)."""
    offsets = reader.offsets[first : last + 1]
    base, counts = int(offsets[0]), np.diff(offsets)
    x, y, p = (reader.root[layout.EVENT_FIELDS[name]][base : int(offsets[-1])] for name in ("x", "y", "p"))
    width, height = (np.repeat(reader.sensor_sizes[first:last, axis], counts) for axis in (0, 1))
    bad = np.flatnonzero((x >= width) | (y >= height) | (p > 1))
    # the recording each bad event is in: the last one that starts at or before it
    owners = np.searchsorted(offsets, base + bad, side="right") - 1
    return first + np.unique(owners)


def _check_frames(reader: DatasetReader) -> list[str]:
    faults = []
    counts = np.diff(reader.offsets)
    for key, spec in reader.frame_keys().items():
        events, static = reader.root[layout.event_frames(key)], reader.root[layout.static_frames(key)]
        recording = reader.frame_recordings(key)
        if len(recording) and (np.any(np.diff(recording) < 0) or recording[-1] >= reader.n_recordings):
            faults.append(f"{layout.frame_recordings(key)}: not an ordered index of the recordings")
            continue
        expected = (len(recording), spec.time_bins, 2, *spec.size)
        if tuple(events.shape) != expected:
            faults.append(f"frames/{key}/events: shape {events.shape} != {expected}")
            continue
        if static.shape[0] != reader.n_images or tuple(static.shape[1:]) != spec.size:
            faults.append(f"frames/{key}/static: shape {static.shape} does not match the images")
        if spec.key != key:
            faults.append(f"frames/{key}: parameters hash to {spec.key}, not to their key")
        if spec.denoise_us == 0:
            sums, saturated = _frame_sums(events, recording, reader.n_recordings)
            binned = counts if not spec.window_us else _events_in_windows(reader, spec)
            for index in np.flatnonzero((sums != binned) & ~saturated)[:20]:
                faults.append(
                    f"frames/{key}: {reader.sources[index]} has {sums[index]} counts "
                    f"for {binned[index]} events"
                )
    return faults


def _frame_sums(events: zarr.Array, recording: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts summed over each recording's frames, and whether any of its cells is saturated (holds
    the dtype's maximum, so its sum undercounts), reading the frames in the pieces that their digests
    are checked in (`array_pieces`): the whole array is the dataset's size (GBs for CIFAR10-DVS)."""
    sums = np.zeros(n, np.int64)
    saturated = np.zeros(n, bool)
    top = np.iinfo(events.dtype).max
    for start, stop in array_pieces(events):
        block = events[start:stop].reshape(stop - start, -1)
        owner = recording[start:stop]
        np.add.at(sums, owner, block.sum(axis=1, dtype=np.int64))
        saturated[owner[block.max(axis=1, initial=0) == top]] = True
    return sums, saturated


def _events_in_windows(reader: DatasetReader, spec: FrameSpec) -> np.ndarray:
    """Events per recording that fixed windows count (``pipelines.binning``): those before the end
    of the T-th window from the first event, or of the last whole slice of T windows; one block of
    recordings' times at a time (`recording_blocks`)."""
    offsets = reader.offsets
    t = reader.root[layout.EVENT_FIELDS["t"]]
    if not _ordered(offsets):  # the events check's fault: said once (`verify_store`)
        raise ValueError("events/offsets: not a non-decreasing sequence from 0")
    if t.shape[0] != offsets[-1]:
        raise ValueError(f"events/t: {t.shape[0]} times for offsets[-1]={offsets[-1]} events")
    inside = np.zeros(reader.n_recordings, np.int64)
    for first, last in recording_blocks(offsets):
        inside[first:last] = _inside_windows(
            t[int(offsets[first]) : int(offsets[last])], offsets[first : last + 1], spec
        )
    return inside


def _inside_windows(t: np.ndarray, offsets: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """`_events_in_windows` of the recordings whose times ``t`` are, cut by ``offsets`` (theirs)."""
    counts = np.diff(offsets)
    starts = (offsets[:-1] - offsets[0])[counts > 0]
    first, last = t[starts], t[starts + counts[counts > 0] - 1]
    length = spec.time_bins * spec.window_us
    slices = np.maximum(1, (last - first) // length) if spec.slices else 1
    end = np.zeros(len(counts), np.int64)
    end[counts > 0] = first + slices * length
    inside = np.zeros(len(counts), np.int64)
    if len(starts):  # the segments of non-empty recordings tile the block: no empty one between
        inside[counts > 0] = np.add.reduceat(t < np.repeat(end, counts), starts, dtype=np.int64)
    return inside


def _check_manifest(reader: DatasetReader, raw: str | Path | None) -> list[str]:
    faults = []
    rows = [r for r in reader.manifest if r["status"] == "ok" and r.get("kind", "events") == "events"]
    if [r["path"] for r in rows] != reader.sources:
        faults.append("manifest: its good recordings do not match events/source")
        return faults
    for row, digest in zip(rows, recording_digests(reader), strict=True):
        if digest != row["data_hash"]:
            faults.append(f"{row['path']}: stored events do not match their recorded hash")
    recorded = raw or reader.attrs.get(layout.RAW_ROOT)
    root = Path(recorded) if recorded else None
    if root is None or not root.is_dir():
        return faults  # raw inputs not reachable here: the stored data was still checked above
    for row in reader.manifest:
        if row.get("kind", "events") != "events":
            continue
        if row["status"] != "ok" and not row.get("sha256"):
            # quarantined at listing time, never read: nothing recorded to compare, and the path may
            # be a FIFO, a link loop or a name the file system cannot give back
            continue
        faults += _check_raw_file(root / row.get("file", row["path"]), row)
    return faults


def _check_raw_file(file: Path, row: dict) -> list[str]:
    """One raw input against its manifest row; a row that was bad at build time may stay unreadable."""
    if not file.exists():
        return [f"{file}: raw input listed in the manifest is missing"]
    try:
        digest = file_sha256(file)
    except OSError as err:
        if row["status"] != "ok":
            return []
        return [f"{file}: raw input cannot be read ({err.strerror or err})"]
    if digest != row["sha256"]:
        return [f"{file}: raw input changed since the build (sha256 differs)"]
    return []

"""EVT 2.0 / 3.0 decoding: word for word what expelliarmus gives, and the refusals around it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from expelliarmus import Wizard

from pipelines.errors import BadInput
from pipelines.formats import read_prophesee_raw

EVT3_KINDS = [0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xC, 0xE, 0xF]


def random_evt3(rng: np.random.Generator, n: int) -> bytes:
    """Any sequence of known EVT 3.0 words (time cannot go back in EVT 3.0, whatever the order)."""
    kinds = rng.choice(EVT3_KINDS, n, p=[0.15, 0.3, 0.05, 0.1, 0.1, 0.15, 0.05, 0.03, 0.04, 0.03])
    return (kinds.astype("<u2") << 12 | rng.integers(0, 1 << 12, n).astype("<u2")).astype("<u2").tobytes()


def random_evt2(rng: np.random.Generator, n: int) -> bytes:
    """CD words in time order, a time high before each change of it, skipped words between."""
    t = np.sort(rng.integers(0, 1 << 34, n))  # time highs up to the 28th bit
    words, high = [], -1
    for i in range(n):
        if t[i] >> 6 != high:
            high = int(t[i]) >> 6
            words.append(0x8 << 28 | high)
        if rng.random() < 0.1:
            words.append(int(rng.choice([0xA, 0xE, 0xF])) << 28 | int(rng.integers(0, 1 << 28)))
        cd = int(rng.integers(0, 2)) << 28 | (int(t[i]) & 0x3F) << 22
        words.append(cd | int(rng.integers(0, 1 << 22)))
    return np.array(words, dtype="<u4").tobytes()


@pytest.mark.parametrize(("name", "make"), [("2.0", random_evt2), ("3.0", random_evt3)])
@pytest.mark.parametrize("seed", range(4))
def test_random_words_decode_as_expelliarmus_does(tmp_path, name, make, seed):
    path = tmp_path / "rec.raw"
    path.write_bytes(f"% evt {name}\n".encode() + make(np.random.default_rng(seed), 5000))
    events, size = read_prophesee_raw(path)
    theirs = Wizard(encoding="evt" + name[0]).read(str(path))
    assert len(events) == len(theirs) > 1000
    for field in "xytp":
        np.testing.assert_array_equal(events[field].astype(np.int64), theirs[field].astype(np.int64))
    assert size == (int(theirs["x"].max()) + 1, int(theirs["y"].max()) + 1)  # no size in the header


def test_evt3_time_fields_wrap_forward(tmp_path):
    path = tmp_path / "rec.raw"
    words = [0x8 << 12 | 4095, 0x6 << 12 | 7, 0x2 << 12 | 1, 0x6 << 12 | 7, 0x2 << 12, 0x8 << 12, 0x2 << 12]
    path.write_bytes(b"% evt 3.0\n" + struct.pack(f"<{len(words)}H", *words))
    # the same time low again is no wrap; time high 4095 -> 0 is one wrap of the field: 2**24 on top
    assert read_prophesee_raw(path)[0]["t"].tolist() == [4095 << 12 | 7, 4095 << 12 | 7, (1 << 24) + 7]


def test_unknown_word_is_named_with_its_place(tmp_path):
    path = tmp_path / "rec.raw"
    path.write_bytes(b"% evt 2.0\n" + struct.pack("<4I", 0x8 << 28, 0x1 << 28, 0x5 << 28 | 9, 0x1 << 28))
    with pytest.raises(BadInput, match="unknown EVT 2.0 word type 0x5 at word 2"):
        read_prophesee_raw(path)
    path.write_bytes(b"% evt 3.0\n" + struct.pack("<3H", 0x0 << 12, 0x2 << 12, 0xD << 12))
    with pytest.raises(BadInput, match="unknown EVT 3.0 word type 0xd at word 2"):
        read_prophesee_raw(path)


def test_vectors_running_past_x_32767_are_refused(tmp_path):
    path = tmp_path / "rec.raw"
    vectors = [0x4 << 12 | 0xFFF] * 2600  # 12 more x per word from 2047: past 32767 at word 2560
    path.write_bytes(b"% evt 3.0\n" + struct.pack(f"<{1 + len(vectors)}H", 0x3 << 12 | 2047, *vectors))
    with pytest.raises(BadInput, match="event x up to 33246: corrupt vector events"):
        read_prophesee_raw(path)
    path.write_bytes(b"% evt 3.0\n" + struct.pack("<3H", 0x3 << 12 | 2047, *vectors[:2]))
    events, size = read_prophesee_raw(path)
    assert events["x"].tolist() == list(range(2047, 2047 + 24)) and size == (2047 + 24, 1)

"""Prophesee EVT 2.0 / EVT 3.0 words to events, in two compiled passes over the words in memory.

The first pass (``evt2_count`` / ``evt3_count``) finds the first word of a type outside ``known``
(a bit mask of word types) and counts the events the words hold, so the caller can refuse a file
before allocating anything; the second (``evt2_decode`` / ``evt3_decode``) writes the events
straight into the caller's ``EVENT_DTYPE`` array and returns what the checks after decoding need:
the index of the first event whose time goes back (-1 when none) and the largest x and y.

Decoding follows expelliarmus' C decoder word for word (tonic's Prophesee datasets read with it,
and the real samples must decode identically), but from the bytes already read and checked: no
second read of the file, no private copy for it, no repack from its layout into ours. Reading
this way is faster than expelliarmus itself, which reads the file twice (count, then decode).
Numba compiles on the first call and caches the machine code beside this module.
"""

from __future__ import annotations

import numba
import numpy as np

#: the bits of an EVT 3.0 word that each stand for one event, by word type: VECT_12, VECT_8
VECTOR_BITS = np.zeros(16, dtype=np.int64)
VECTOR_BITS[0x4], VECTOR_BITS[0x5] = 0xFFF, 0xFF


@numba.njit(cache=True, nogil=True)
def _set_bits(v: int) -> int:
    """Set bits of a 16-bit value, without branches (the count pass runs on every word)."""
    v = v - ((v >> 1) & 0x5555)
    v = (v & 0x3333) + ((v >> 2) & 0x3333)
    v = (v + (v >> 4)) & 0x0F0F
    return (v + (v >> 8)) & 0x1F


@numba.njit(cache=True, nogil=True)
def _first_unknown(words: np.ndarray, shift: int, known: int) -> int:
    for i in range(len(words)):
        if not (known >> (words[i] >> shift)) & 1:
            return i
    return -1


@numba.njit(cache=True, nogil=True)
def evt2_count(words: np.ndarray, known: int) -> tuple[int, int]:
    """(index of the first word of an unknown type or -1, CD events): CD_OFF / CD_ON, one each.
    Branch-free over the words; only a file with an unknown word is scanned again for its index."""
    events, unknown = 0, 0
    for j in range(len(words)):  # numba vectorizes an index loop, not one over the array itself
        w = words[j]
        kind = w >> 28
        unknown |= ~(known >> kind) & 1
        events += kind <= 1
    return (_first_unknown(words, 28, known) if unknown else -1), events


@numba.njit(cache=True, nogil=True)
def evt2_decode(words: np.ndarray, out: np.ndarray) -> tuple[int, int, int]:
    """CD events into ``out``: t from the last EV_TIME_HIGH (0 before the first) and 6 low bits."""
    time_high, last_t, back, max_x, max_y, i = np.int64(0), np.int64(0), -1, 0, 0, 0
    for j in range(len(words)):
        w = words[j]
        kind = w >> 28
        if kind <= 1:
            t = (time_high << 6) | ((w >> 22) & 0x3F)
            x, y = (w >> 11) & 0x7FF, w & 0x7FF
            if t < last_t and back < 0:
                back = i
            last_t = t
            max_x, max_y = max(max_x, x), max(max_y, y)
            out[i].x, out[i].y, out[i].t, out[i].p = x, y, t, kind
            i += 1
        elif kind == 0x8:
            time_high = np.int64(w & 0x0FFFFFFF)
    return back, max_x, max_y


@numba.njit(cache=True, nogil=True)
def evt3_count(words: np.ndarray, known: int) -> tuple[int, int]:
    """(index of the first word of an unknown type or -1, CD events): one per EVT_ADDR_X, one per
    set bit of the 12 / 8 low bits of VECT_12 / VECT_8. Branch-free, as ``evt2_count``."""
    events, unknown = 0, 0
    for j in range(len(words)):  # numba vectorizes an index loop, not one over the array itself
        w = words[j]
        kind = w >> 12
        unknown |= ~(known >> kind) & 1
        events += _set_bits(w & VECTOR_BITS[kind]) + (kind == 0x2)
    return (_first_unknown(words, 12, known) if unknown else -1), events


@numba.njit(cache=True, nogil=True)
def evt3_decode(words: np.ndarray, out: np.ndarray) -> tuple[int, int, int]:
    """CD events into ``out``, with expelliarmus' state machine: y, polarity and time carry over
    from the last word that set them; a 12-bit TIME_LOW or TIME_HIGH below the last counts as one
    wrap of that field; vector x runs on from VECT_BASE_X in 16 bits. Time never goes back (a wrap
    adds more than the field's drop takes away), so the first value returned is always -1."""
    y, p, t, base_x = 0, 0, np.int64(0), 0
    time_low, time_high, low_wraps, high_wraps = np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    max_x, max_y, i = 0, 0, 0
    for j in range(len(words)):
        w = words[j]
        kind = w >> 12
        if kind == 0x0:
            y = w & 0x7FF
        elif kind == 0x2:
            p, x = (w >> 11) & 1, w & 0x7FF
            max_x, max_y = max(max_x, x), max(max_y, y)
            out[i].x, out[i].y, out[i].t, out[i].p = x, y, t, p
            i += 1
        elif kind == 0x3:
            p, base_x = (w >> 11) & 1, w & 0x7FF
        elif kind == 0x4 or kind == 0x5:
            width = 12 if kind == 0x4 else 8
            for k in range(width):
                if (w >> k) & 1:
                    x = (base_x + k) & 0xFFFF
                    max_x, max_y = max(max_x, x), max(max_y, y)
                    out[i].x, out[i].y, out[i].t, out[i].p = x, y, t, p
                    i += 1
            base_x = (base_x + width) & 0xFFFF
        elif kind == 0x6 or kind == 0x8:
            value = np.int64(w & 0xFFF)
            if kind == 0x6:
                low_wraps += value < time_low
                time_low = value
            else:
                high_wraps += value < time_high
                time_high = value
            t = (high_wraps << 24) + ((time_high + low_wraps) << 12) + time_low
    return -1, max_x, max_y

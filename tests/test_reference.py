"""The pure-torch reference of Time-step Mixup, the static scale and the in-memory data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tmkt.data import MixData, keep_per_class, static_lut, static_scale_of
from tmkt.draws import AugmentConfig, Draws
from tmkt.reference import apply_mix, expand_static, mix_batch_reference, shift_and_flip


def make_data(
    n: int = 60, m: int = 30, T: int = 6, size: tuple[int, int] = (12, 10), classes: int = 3, seed: int = 0
) -> MixData:
    """Random frames whose values tell events, statics and recordings apart."""
    rng = np.random.default_rng(seed)
    events = rng.poisson(1.5, (n, T, 2, *size)).astype(np.uint16)
    statics = rng.integers(0, 256, (m, *size)).astype(np.uint8)
    return MixData(
        event_frames=events,
        event_labels=rng.integers(0, classes, n),
        static_frames=statics,
        static_labels=np.arange(m) % classes,
        static_scale=static_scale_of(events, statics),
        num_classes=classes,
    )


def test_static_scale_matches_the_mean_static_frame_to_the_mean_event_frame():
    frames = np.zeros((2, 3, 2, 10, 10), np.uint16)
    frames.flat[:200] = np.arange(1, 201)
    statics = np.zeros((4, 10, 10), np.uint8)
    statics[:, :5] = 255  # half the pixels full
    scale = static_scale_of(frames, statics)
    assert scale == pytest.approx(frames.mean() / 0.5)
    assert (statics / 255 * scale).mean() == pytest.approx(frames.mean())
    assert static_scale_of(np.zeros((1, 2, 2, 3, 3), np.uint16), statics) == 1.0
    assert static_scale_of(frames, np.zeros((1, 10, 10), np.uint8)) == 1.0
    lut = static_lut(7.5)
    assert lut.dtype == np.float32 and lut[0] == 0 and lut[255] == np.float32(7.5)
    assert lut[51] == np.float32(51 / 255 * 7.5)


def test_each_sample_is_static_before_the_cut_and_events_after():
    data = make_data()
    T = data.time_steps
    indices = np.arange(40)
    draws = Draws(
        static_index=np.array(
            [np.flatnonzero(data.static_labels == c)[0] for c in data.event_labels[indices]]
        ),
        cut=np.arange(40) % (T + 1) + 1,  # every cut 1..T+1, no-cut included
        offset=np.zeros((40, 2), np.int32),
        flip=np.zeros(40, np.int32),
    )
    batch = mix_batch_reference(data, indices, 0.5, np.random.default_rng(0), None, draws=draws)
    lut = static_lut(data.static_scale)
    for b, (i, s, t_star) in enumerate(zip(indices, draws.static_index, draws.cut, strict=True)):
        frames = batch.frames[b].numpy()
        static_frame = lut[data.static_frames[s]]
        for t in range(1, T + 1):
            expected = data.event_frames[i, t - 1].astype(np.float32) if t >= t_star else static_frame[None]
            np.testing.assert_array_equal(frames[t - 1], np.broadcast_to(expected, frames[t - 1].shape))
        np.testing.assert_array_equal(
            batch.mag[b].numpy(), (np.arange(1, T + 1) >= t_star).astype(np.float32)
        )
        assert batch.mrp[b].item() == pytest.approx((T - t_star + 1) / T)
    assert torch.equal(batch.labels, torch.from_numpy(data.event_labels[indices]))
    assert torch.equal(batch.index, torch.from_numpy(indices))


def test_random_pairs_have_the_same_label_and_are_uniform_within_the_class():
    data = make_data(m=30)
    indices = np.flatnonzero(data.event_labels == 1)
    rng = np.random.default_rng(5)
    chosen = []
    for _ in range(300):
        batch = mix_batch_reference(data, indices, 0.0, rng, None)  # r_m = 0: all static
        static_only = batch.frames[:, 0, 0].numpy()  # [B, H, W], the scaled static
        lut = static_lut(data.static_scale)
        candidates = np.flatnonzero(data.static_labels == 1)
        table = lut[data.static_frames[candidates]]  # [K, H, W]
        match = (static_only[:, None] == table[None]).all(axis=(2, 3))
        assert np.all(match.sum(axis=1) == 1), "every static frame is exactly one static of the same class"
        chosen.append(candidates[match.argmax(axis=1)])
        assert torch.all(batch.mag == 0) and torch.all(batch.mrp == 0)
    counts = np.bincount(np.concatenate(chosen), minlength=len(data.static_labels))[candidates]
    assert chisquare(counts).pvalue > 1e-3


def test_apply_mix_equals_the_formula_and_keeps_frames_exact():
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.random((4, 5, 2, 3, 3), dtype=np.float32) * 3.3)
    e = torch.from_numpy(rng.integers(0, 9, (4, 5, 2, 3, 3)).astype(np.float32))
    cut = np.array([1, 2, 5, 6])
    out = apply_mix(s, e, cut)
    mask = torch.from_numpy((np.arange(1, 6)[None] >= cut[:, None]).astype(np.float32))[..., None, None, None]
    torch.testing.assert_close(out, s + (e - s) * mask)
    assert torch.equal(out[0], e[0]) and torch.equal(out[3], s[3])
    assert torch.equal(out[1, 0], s[1, 0]) and torch.equal(out[1, 1:], e[1, 1:])
    # a static that broadcasts over steps and polarities gives the same result as the expanded one
    one_frame = s[:, :1, :1]
    assert torch.equal(apply_mix(one_frame, e, cut), apply_mix(one_frame.expand_as(e), e, cut))
    with pytest.raises(ValueError, match="does not fit"):
        apply_mix(s[:, :, :, :2], e, cut)


def test_expand_static_copies_to_every_step_and_polarity():
    statics = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    seq = expand_static(statics, 5)
    assert seq.shape == (2, 5, 2, 3, 4)
    assert torch.equal(seq[1, 4, 1], statics[1]) and torch.equal(seq[0, 2, 0], statics[0])


def test_shift_and_flip_crops_with_zero_padding():
    image = torch.arange(1, 13, dtype=torch.float32).reshape(1, 3, 4)  # rows 1..4, 5..8, 9..12
    down_right = shift_and_flip(image, np.array([[1, 2]]), np.array([0]))
    assert down_right[0].tolist() == [[7, 8, 0, 0], [11, 12, 0, 0], [0, 0, 0, 0]]
    up_left = shift_and_flip(image, np.array([[-1, -1]]), np.array([0]))
    assert up_left[0].tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]]
    mirrored = shift_and_flip(image, np.array([[0, 1]]), np.array([1]))
    assert mirrored[0].tolist() == [[0, 4, 3, 2], [0, 8, 7, 6], [0, 12, 11, 10]]


def test_augmentation_moves_events_and_their_static_together():
    data = make_data()
    indices = np.arange(8)
    draws = Draws(
        static_index=np.array(
            [np.flatnonzero(data.static_labels == c)[0] for c in data.event_labels[indices]]
        ),
        cut=np.ones(8, np.int64),  # mode "pair": the frames are the events
        offset=np.array([[1, -2]] * 8, np.int32),
        flip=np.array([1, 0] * 4, np.int32),
    )
    aug = AugmentConfig(crop_padding=2, hflip=True)
    batch = mix_batch_reference(data, indices, 0.5, None, aug, mode="pair", draws=draws)
    lut = torch.from_numpy(static_lut(data.static_scale))
    plain_static = lut[torch.from_numpy(data.static_frames[draws.static_index]).long()]
    plain_events = torch.from_numpy(data.event_frames[indices].astype(np.float32))
    torch.testing.assert_close(batch.frames, shift_and_flip(plain_events, draws.offset, draws.flip))
    expected_static = shift_and_flip(plain_static, draws.offset, draws.flip)
    torch.testing.assert_close(batch.static, expand_static(expected_static, data.time_steps))
    assert torch.all(batch.mag == 1)
    with pytest.raises(ValueError, match="augmentation is off"):
        mix_batch_reference(data, indices, 0.5, None, None, draws=draws)


def test_keep_per_class_keeps_k_per_class_and_nests():
    labels = np.repeat(np.arange(4), 10)
    indices = np.arange(100, 140)
    small, large = keep_per_class(indices, labels, 3, seed=1), keep_per_class(indices, labels, 6, seed=1)
    assert np.all(np.bincount(labels[small - 100]) == 3) and np.all(np.bincount(labels[large - 100]) == 6)
    assert set(small) <= set(large)
    assert not np.array_equal(small, keep_per_class(indices, labels, 3, seed=2))


def test_mixdata_rejects_inconsistent_arrays():
    good = make_data()
    with pytest.raises(ValueError, match="uint16"):
        MixData(
            good.event_frames.astype(np.float32),
            good.event_labels,
            good.static_frames,
            good.static_labels,
            1.0,
            3,
        )
    with pytest.raises(ValueError, match="size"):
        MixData(good.event_frames, good.event_labels, good.static_frames[:, :5], good.static_labels, 1.0, 3)
    with pytest.raises(ValueError, match="event_labels"):
        MixData(good.event_frames, good.event_labels + 3, good.static_frames, good.static_labels, 1.0, 3)

"""NDA and EventDrop augmentations: the DALI loader equals the reference bit for bit, and each does what
it says (identity when off, the drawn change when on, the same batch from the same seed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.test_loader import assert_same_batches, loader_for
from tests.test_reference import make_data
from tmkt.augment import EXTRA_FIELDS, AugmentConfig, draw_extra, source_map
from tmkt.data import static_lut
from tmkt.draws import Draws
from tmkt.reference import mix_batch_reference

PLAIN = {"crop_padding": 0, "hflip": False}
EACH = {
    "roll": AugmentConfig(**PLAIN, roll=3),
    "rotate": AugmentConfig(**PLAIN, rotate=30),
    "shear": AugmentConfig(**PLAIN, shear=20),
    "cutout": AugmentConfig(**PLAIN, cutout=5),
    "drop_pixel": AugmentConfig(**PLAIN, drop_pixel=0.2),
    "drop_time": AugmentConfig(**PLAIN, drop_time=0.5),
    "all": AugmentConfig(
        crop_padding=2, hflip=True, roll=2, rotate=15, shear=10, cutout=4, drop_pixel=0.1, drop_time=0.4
    ),
}


def plain_draws(data, indices, T: int, **extra) -> Draws:
    """Draws without crop or flip, cut 1 (all events, mode "pair"), the first static of each class."""
    n = len(indices)
    first = [np.flatnonzero(data.static_labels == c)[0] for c in data.event_labels[indices]]
    return Draws(
        static_index=np.array(first),
        cut=np.ones(n, np.int64),
        offset=np.zeros((n, 2), np.int32),
        flip=np.zeros(n, np.int32),
        **extra,
    )


def nonzero_data(size=(12, 10), T=6):
    """Frames with no zero count, so every zero in an output was put there by an augmentation."""
    data = make_data(n=20, m=9, T=T, size=size)
    data.event_frames += 1
    data.static_frames[data.static_frames == 0] = 1
    return data


def pair_batch(data, augment, **extra):
    indices = np.arange(len(data.event_labels))
    draws = plain_draws(data, indices, data.time_steps, **extra)
    return mix_batch_reference(data, indices, 1.0, None, augment, mode="pair", draws=draws), indices


def plain_events(data, indices) -> torch.Tensor:
    return torch.from_numpy(data.event_frames[indices].astype(np.float32))


@pytest.mark.parametrize("mode", ["mix", "pair", "static", "event"])
@pytest.mark.parametrize("name", list(EACH))
def test_dali_equals_the_reference_with_each_augmentation(name, mode):
    data = make_data(n=40)
    augment = EACH[name]
    loader = loader_for(data, mode=mode, augment=augment)
    loader.set_ratio(0.5)
    batches = assert_same_batches(data, loader, 0.5, augment, mode, epoch=1)
    if mode in ("event", "pair"):  # the augmentation changed the recordings
        frames = torch.cat([b.frames for b in batches])
        plain = torch.cat([plain_events(data, b.index.numpy()) for b in batches])
        assert not torch.equal(frames, plain), f"{name} left every sample as it was"


def test_off_is_the_identity_and_draws_nothing():
    data = make_data(n=32)
    off = [
        None,
        AugmentConfig(**PLAIN),
        AugmentConfig(enabled=False, roll=3, rotate=30, shear=20, cutout=5, drop_pixel=0.5, drop_time=1.0),
    ]
    runs = []
    for augment in off:
        loader = loader_for(data, mode="event", augment=augment, shuffle=False)
        runs.append(torch.cat([b.frames for b in loader]))
    for frames in runs:
        assert torch.equal(frames, plain_events(data, np.arange(32)))
    rng = np.random.default_rng(0)
    extra = draw_extra(off[2], 4, 6, (12, 10), rng)
    assert all(extra[name] is None for name in EXTRA_FIELDS)
    assert rng.random() == np.random.default_rng(0).random(), "nothing drawn when off"
    assert source_map(plain_draws(data, np.arange(4), 6), (12, 10)) is None


def test_rotation_by_90_degrees_turns_the_frame_counter_clockwise():
    for size in [(7, 7), (8, 8)]:
        data = nonzero_data(size=size)
        n = len(data.event_labels)
        batch, indices = pair_batch(data, AugmentConfig(**PLAIN, rotate=90), angle=np.full(n, 90.0))
        events = plain_events(data, indices)
        expected = torch.from_numpy(np.rot90(events.numpy(), k=1, axes=(-2, -1)).copy())
        assert torch.equal(batch.frames, expected)
        # the top-left pixel lands bottom-left, as displayed
        H = size[0]
        assert torch.equal(batch.frames[..., H - 1, 0], events[..., 0, 0])
        half, _ = pair_batch(data, AugmentConfig(**PLAIN, rotate=180), angle=np.full(n, 180.0))
        assert torch.equal(half.frames, torch.flip(events, dims=[-2, -1]))


def test_roll_is_a_circular_shift_of_the_drawn_amount():
    data = nonzero_data()
    n = len(data.event_labels)
    shifts = np.stack([np.arange(n) % 5 - 2, np.arange(n) % 7 - 3], axis=1).astype(np.int32)
    batch, indices = pair_batch(data, AugmentConfig(**PLAIN, roll=3), roll=shifts)
    events = plain_events(data, indices)
    for b, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(batch.frames[b], torch.roll(events[b], shifts=(dy, dx), dims=(-2, -1)))


def test_shear_moves_rows_by_their_distance_from_the_centre():
    data = nonzero_data(size=(5, 9))
    n = len(data.event_labels)
    batch, indices = pair_batch(data, AugmentConfig(**PLAIN, shear=45), shear=np.full(n, 45.0))
    events, out = plain_events(data, indices), batch.frames
    assert torch.equal(out[..., 2, :], events[..., 2, :]), "the centre row stays"
    assert torch.equal(out[..., 4, 2:], events[..., 4, :-2]), "two rows below: two pixels right"
    assert torch.equal(out[..., 0, :-2], events[..., 0, 2:]), "two rows above: two pixels left"
    assert torch.all(out[..., 4, :2] == 0) and torch.all(out[..., 0, -2:] == 0), "zero fill"


def test_cutout_zeros_a_box_of_the_drawn_size_in_events_and_static():
    data = nonzero_data()
    n = len(data.event_labels)
    boxes = np.array([[1, 2, 3, 4], [0, 0, 12, 1], [11, 9, 1, 1]] * 7, np.int32)[:n]
    batch, indices = pair_batch(data, AugmentConfig(**PLAIN, cutout=12), cutout=boxes)
    events = plain_events(data, indices)
    for b, (y, x, h, w) in enumerate(boxes.tolist()):
        box = torch.zeros(12, 10, dtype=torch.bool)
        box[y : y + h, x : x + w] = True
        for seq in (batch.frames[b], batch.static[b]):
            assert torch.all(seq[..., box] == 0)
            assert torch.all(seq[..., ~box] != 0)
        assert torch.equal(batch.frames[b][..., ~box], events[b][..., ~box])
    rng = np.random.default_rng(1)
    drawn = draw_extra(AugmentConfig(**PLAIN, cutout=5), 2000, 6, (12, 10), rng)["cutout"]
    y, x, h, w = drawn.T
    assert set(h.tolist()) == set(w.tolist()) == {1, 2, 3, 4, 5}
    assert y.min() == 0 and x.min() == 0 and np.all(y + h <= 12) and np.all(x + w <= 10)
    assert (y + h).max() == 12 and (x + w).max() == 10


def test_drop_by_time_zeroes_the_drawn_steps_of_every_sequence():
    data = nonzero_data(T=8)
    n = len(data.event_labels)
    dropped = np.zeros((n, 8), bool)
    dropped[0, 2:5] = True
    dropped[1, 7] = True
    batch, indices = pair_batch(data, AugmentConfig(**PLAIN, drop_time=0.5), drop_time=dropped)
    events = plain_events(data, indices)
    lut = static_lut(data.static_scale)
    keep = torch.from_numpy(~dropped)
    assert torch.all(batch.frames[~keep] == 0) and torch.all(batch.static[~keep] == 0)
    assert torch.equal(batch.frames[keep], events[keep])
    static_b0 = torch.from_numpy(lut[data.static_frames[plain_draws(data, indices, 8).static_index[0]]])
    assert torch.equal(batch.static[0, 0, 1], static_b0) and torch.all(batch.static[0, 1] != 0)
    assert torch.all(batch.mag == 1), "the targets still say 'events' for a dropped step"
    drawn = draw_extra(AugmentConfig(**PLAIN, drop_time=0.5), 3000, 8, (4, 4), np.random.default_rng(2))
    lengths = drawn["drop_time"].sum(axis=1)
    assert set(lengths.tolist()) == {0, 1, 2, 3, 4}
    runs = np.diff(drawn["drop_time"].astype(int), axis=1)
    assert np.all((runs == 1).sum(axis=1) <= 1), "one run of consecutive steps"


def test_drop_by_pixel_zeroes_the_drawn_pixels_at_every_step_and_polarity():
    data = nonzero_data()
    drawn = draw_extra(AugmentConfig(**PLAIN, drop_pixel=0.25), 20, 6, (12, 10), np.random.default_rng(3))
    mask = drawn["drop_pixel"]
    assert abs(mask.mean() - 0.25) < 0.03
    batch, indices = pair_batch(data, AugmentConfig(**PLAIN, drop_pixel=0.25), drop_pixel=mask)
    events = plain_events(data, indices)
    gone = torch.from_numpy(mask)[:, None, None].expand_as(events)
    assert torch.all(batch.frames[gone] == 0) and torch.all(batch.static[gone] == 0)
    assert torch.equal(batch.frames[~gone], events[~gone])


def test_the_same_seed_gives_the_same_augmented_batches():
    data = make_data(n=40)
    augment = EACH["all"]
    epochs = []
    for seed in (4, 4, 5):
        loader = loader_for(data, augment=augment, seed=seed, mode="pair")
        loader.set_epoch(3)
        epochs.append(torch.cat([b.frames for b in loader]))
    assert torch.equal(epochs[0], epochs[1])
    assert not torch.equal(epochs[0], epochs[2])
    a = draw_extra(augment, 8, 6, (12, 10), np.random.default_rng(9))
    b = draw_extra(augment, 8, 6, (12, 10), np.random.default_rng(9))
    assert all(np.array_equal(a[k], b[k]) for k in EXTRA_FIELDS)


def test_config_ranges_and_the_train_config_keys():
    from tmkt.config import TrainConfig

    for bad in ({"rotate": 200}, {"shear": 90}, {"drop_pixel": 1.5}, {"drop_time": -0.1}, {"roll": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AugmentConfig(**bad)
    cfg = TrainConfig(roll=2, rotate=15.0, cutout=6, drop_time=0.3, hflip=True, crop_padding=3)
    augment = AugmentConfig.from_fields(cfg)
    assert dataclasses.asdict(augment) == {
        "crop_padding": 3,
        "hflip": True,
        "enabled": True,
        "roll": 2,
        "rotate": 15.0,
        "shear": 0.0,
        "cutout": 6,
        "drop_pixel": 0.0,
        "drop_time": 0.3,
    }
    assert not AugmentConfig.from_fields(dataclasses.replace(cfg, augment=False)).active
    with pytest.raises(ValueError, match="rotate"):
        TrainConfig(rotate=181)


def test_train_keys_reach_the_loader():
    from tmkt.config import TrainConfig, config_with
    from tmkt.system import Dist
    from tmkt.train_setup import train_loader

    cfg = config_with(TrainConfig(), {"rotate": "15", "cutout": "4", "drop_time": "0.25", "hflip": "true"})
    loader = train_loader(make_data(n=20), cfg, "mix", Dist(), torch.device("cpu"))
    augment = loader.cfg.augment
    assert (augment.rotate, augment.cutout, augment.drop_time, augment.hflip) == (15.0, 4, 0.25, True)
    assert augment.crop_padding == cfg.crop_padding and augment.warps
    batch = next(iter(loader))
    assert batch.frames.shape == (20, 6, 2, 12, 10)


def test_the_pure_event_sequence_gets_the_augmentation_of_its_mixed_sequence():
    """``with_events``: the event sequence of each mixed sample goes through the same source map, crop,
    flip and dropped steps as the mixed one, so the two differ only where statics were mixed in."""
    data = make_data(n=40)
    augment = EACH["all"]
    loader = loader_for(data, mode="mix", augment=augment, with_events=True)
    loader.set_ratio(0.5)
    batches = assert_same_batches(data, loader, 0.5, augment, "mix", epoch=1, with_events=True)
    for batch in batches:
        event_steps = batch.mag.bool()
        assert torch.equal(batch.events[event_steps], batch.frames[event_steps])
    events = torch.cat([b.events for b in batches])
    plain = torch.cat([plain_events(data, b.index.numpy()) for b in batches])
    assert not torch.equal(events, plain), "the event sequences were augmented"
    dropped = (events.flatten(2) == 0).all(-1)  # whole steps set to zero by the time drop
    assert dropped.any() and not dropped.all()

"""The Python blocks of the README and of docs/python-api.md, run as written against a store built
here, and what they promise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipelines.build import BuildConfig, run_build

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text())


def run_blocks(page: str) -> dict:
    """Run ``page``'s blocks in turn in one namespace; a failure names the page and the block."""
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(page), 1):
        try:
            exec(compile(block, f"{page} python block {number}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page} python block {number} failed: {err!r}\n{block}") from err
    return namespace


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``stores/nmnist``, the path the README's blocks read: built-in digits with few
    recordings per class (the real N-MNIST subset takes the same code path, only longer)."""
    root = tmp_path_factory.mktemp("readme")
    run_build(
        BuildConfig(
            source="builtin",
            raw=str(root / "raw"),
            store=str(root / "stores" / "nmnist"),
            workers=1,
            source_options={"recordings_per_class": 5},
        )
    )
    return root


def test_the_readme_and_the_api_page_have_python_blocks():
    blocks = python_blocks("docs/python-api.md")
    assert len(blocks) >= 4, "docs/python-api.md documents the Python API in runnable blocks"
    assert any("open_store" in b for b in blocks) and any("xr.open_zarr" in b for b in blocks)
    (tour,) = python_blocks("README.md")
    assert "open_store" in tour and "MixLoader" in tour


@pytest.mark.slow
def test_the_readme_tour_block_runs_and_mixes(store_dir, monkeypatch, capsys):
    monkeypatch.chdir(store_dir)
    ns = run_blocks("README.md")
    reader = ns["ds"]
    assert reader.n_recordings == 50
    assert ns["frames"].shape == (len(ns["train"]), 10, 2, 34, 34)
    np.testing.assert_array_equal(ns["frames"], reader.event_frames(indices=ns["train"]))
    batch = ns["batch"]
    assert batch.frames.shape == (8, 10, 2, 34, 34)
    assert set(np.unique(batch.mag.numpy())) <= {0.0, 1.0}
    np.testing.assert_allclose(batch.mrp.numpy(), batch.mag.numpy().mean(1))
    assert "50 recordings," in capsys.readouterr().out


@pytest.mark.slow
def test_every_python_block_of_the_api_page_runs(store_dir, monkeypatch, capsys):
    monkeypatch.chdir(store_dir)
    ns = run_blocks("docs/python-api.md")
    # the blocks' results are the store's real contents, not placeholders
    reader = ns["ds"]
    assert reader.n_recordings == 50 and len(reader.classes) == 10
    assert ns["frames"].shape == (len(ns["train"]), 10, 2, 34, 34) and ns["frames"].dtype == np.uint16
    assert ns["pinned"].snapshot_id == reader.snapshot_id
    assert ns["frames_xr"]["events"].dims == ("recording", "time", "polarity", "y", "x")
    on_counts = reader.event_frames()[:, :, 1].reshape(reader.n_recordings, -1).sum(1)
    np.testing.assert_array_equal(ns["on_events"].values, on_counts)
    assert len(ns["train_set"]) == len(ns["train"])
    x0, label0 = ns["train_set"][0]
    np.testing.assert_array_equal(x0.numpy(), ns["frames"][0].astype(np.float32))
    assert label0 == reader.labels[ns["train"][0]]
    batch = ns["batch"]
    assert batch.frames.shape[1:] == (10, 2, 34, 34)
    assert set(np.unique(batch.mag.numpy())) <= {0.0, 1.0}
    np.testing.assert_allclose(batch.mrp.numpy(), batch.mag.numpy().mean(1))
    assert "recordings" in capsys.readouterr().out


def test_xarray_opens_a_frames_group_with_named_dimensions(store_dir):
    import xarray as xr

    from storage import open_store

    reader = open_store(store_dir / "stores" / "nmnist")
    key = reader.default_frame_key()
    group = xr.open_zarr(reader.session.store, group=f"frames/{key}", consolidated=False)
    assert group["events"].dims == ("recording", "time", "polarity", "y", "x")
    assert group["static"].dims == ("image", "y", "x")
    assert group.sizes["recording"] == reader.n_recordings and group.sizes["image"] == reader.n_images
    np.testing.assert_array_equal(group["events"].values, reader.event_frames(key))
    events = xr.open_zarr(reader.session.store, group="events", consolidated=False)
    assert events["t"].dims == ("event",) and events["label"].dims == ("recording",)
    assert events.sizes["event"] == reader.n_events

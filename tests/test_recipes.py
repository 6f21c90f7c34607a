"""Per-dataset recipes: the config files, the training page (docs/training.md) that cites them, and
the published counts that `tmkt store info` checks a store against."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.build import BuildConfig, run_build
from pipelines.formats import read_image, write_aedat2, write_nmnist
from pipelines.images import static_frame
from pipelines.sources import get_source
from pipelines.sources.base import PublishedCounts
from pipelines.sources.cifar10dvs import CIFAR10DVS_CLASSES
from storage.reader import DatasetReader
from storage.schema import EVENT_DTYPE
from tmkt.config import TrainConfig, config_with, read_config_file

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["cifar10dvs", "ncaltech101", "dvsgesture"]


def events(seed: int, width: int, height: int, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, width, n), rng.integers(0, height, n)
    ev["t"] = np.sort(rng.integers(0, 300_000, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_the_training_page_cites_it_with_its_command(name):
    path = ROOT / "configs" / f"{name}.toml"
    cfg = config_with(TrainConfig(), read_config_file(path))
    assert cfg.backbone == "vgg_snn" and cfg.optimizer == "adamw" and cfg.cosine_lr
    readme = (ROOT / "docs" / "training.md").read_text()
    train = re.search(rf"^tmkt train --store stores/{name} .*--config configs/{name}\.toml$", readme, re.M)
    build = re.search(rf"^tmkt build-dataset --source {name} ", readme, re.M)
    assert train and build, f"docs/training.md does not show how to build and train with configs/{name}.toml"
    # the commands in the file's own comments are the training page's
    assert f"--config configs/{name}.toml" in path.read_text()


def test_paper_protocol_recipes_use_he_et_als_optimiser_and_schedule():
    for name in ("cifar10dvs", "ncaltech101"):
        cfg = config_with(TrainConfig(), read_config_file(ROOT / "configs" / f"{name}.toml"))
        assert (cfg.method, cfg.epochs, cfg.batch_size, cfg.lr, cfg.min_lr, cfg.weight_decay) == (
            "tmkt",
            300,
            120,
            5e-3,
            1e-5,
            0.01,
        )
        assert cfg.hflip and cfg.warmup_steps > 0 and cfg.l_event == 0.0
        text = (ROOT / "configs" / f"{name}.toml").read_text()
        assert "--time-bins 10 --size 48 48 --static-mode v" in text
    gesture = config_with(TrainConfig(), read_config_file(ROOT / "configs/dvsgesture.toml"))
    assert gesture.method == "event" and not gesture.hflip


def test_published_counts_name_every_difference():
    facts = PublishedCounts(
        "test facts",
        per_split={"train": 3, "test": 1},
        per_class={"all": {"a": 2, "b": 2}},
    )
    rows = [
        {"kind": "events", "label": 0, "split": "train"},
        {"kind": "events", "label": 0, "split": "val"},  # carved from train: counts as train
        {"kind": "events", "label": 1, "split": "test"},
        {"kind": "static", "label": 1, "split": "train"},  # statics are not recordings
    ]
    assert facts.warnings(["a", "b", "c"], rows) == [
        "split train: 2 recordings, the published download has 3",
        "class 'b': 1 recordings, the published download has 2",
        "class 'c': no recordings",
    ]
    rows.append({"kind": "events", "label": 1, "split": "train"})
    assert facts.warnings(["a", "b"], rows) == []
    many = PublishedCounts("x", per_class={"all": {str(i): 1 for i in range(20)}})
    lines = many.warnings([str(i) for i in range(20)], [], limit=5)
    assert len(lines) == 6 and lines[-1] == "... and 15 more counts that differ"


def test_adapters_carry_the_published_counts():
    cifar = get_source("cifar10dvs").published
    assert dict(cifar.per_class["all"]) == dict.fromkeys(CIFAR10DVS_CLASSES, 1000)
    nmnist = get_source("nmnist").published
    assert dict(nmnist.per_split) == {"train": 60000, "test": 10000}
    assert sum(nmnist.per_class["test"].values()) == 10000
    assert dict(get_source("dvsgesture").published.per_split) == {"train": 1176, "test": 288}
    assert get_source("folder").published is None and get_source("builtin").published is None


@pytest.mark.realdata
def test_nmnist_test_counts_are_the_real_mnist_test_labels(real_data_dir):
    from pipelines.formats import read_idx

    labels = read_idx(real_data_dir / "mnist/t10k-labels-idx1-ubyte.gz")
    per_digit = get_source("nmnist").published.per_class["test"]
    assert [per_digit[str(d)] for d in range(10)] == np.bincount(labels).tolist()


def store_info(store: Path, capsys) -> str:
    from flows.cli import main

    assert main(["store", "info", str(store)]) == 0
    return capsys.readouterr().out


def test_store_info_warns_about_an_incomplete_cifar10dvs_download(tmp_path, client, capsys):
    raw = tmp_path / "raw"
    for i, name in enumerate(["airplane/a0.aedat", "airplane/a1.aedat", "truck/t0.aedat"]):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        write_aedat2(raw / name, events(i, 128, 128))
    config = BuildConfig(source="cifar10dvs", raw=str(raw), store=str(tmp_path / "s"), val_fraction=0.0)
    assert run_build(config, client=client).committed
    out = store_info(tmp_path / "s", capsys)
    assert "warning: the recordings differ from the published download (CIFAR10-DVS: 1,000 recordings" in out
    assert "    class 'airplane': 2 recordings, the published download has 1000" in out
    assert "    class 'truck': 1 recordings, the published download has 1000" in out
    assert "    class 'bird': 0 recordings, the published download has 1000" in out


@pytest.mark.realdata
def test_ncaltech101_recipe_build_on_the_real_caltech101_images(tmp_path, client, capsys, real_data_dir):
    """The static side of --source ncaltech101 is the real Caltech101 download layout: statics become
    V-channel 48x48 frames, Faces and BACKGROUND_Google are skipped, and info names the missing classes."""
    caltech = real_data_dir / "caltech101"
    if not (caltech / "101_ObjectCategories").is_dir():
        pytest.skip("the real Caltech101 images are not in TMKT_REAL_DATA")
    chosen = ["accordion", "Faces_easy", "yin_yang"]
    static = tmp_path / "Caltech101"
    for name in [*chosen, "Faces"]:
        shutil.copytree(caltech / "101_ObjectCategories" / name, static / "101_ObjectCategories" / name)
    raw = tmp_path / "N-Caltech101"
    for c, name in enumerate([*chosen, "BACKGROUND_Google"]):
        for i in range(3):
            path = raw / "Caltech101" / name / f"image_{i + 1:04d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_nmnist(path, events(10 * c + i, 200 + 10 * i, 150))
    config = BuildConfig(
        source="ncaltech101",
        raw=str(raw),
        static=str(static),
        store=str(tmp_path / "s"),
        time_bins=10,
        size=(48, 48),
        static_mode="v",
    )
    assert run_build(config, client=client).committed
    reader = DatasetReader(tmp_path / "s")
    assert reader.n_recordings == 9  # BACKGROUND_Google skipped
    assert reader.event_frames().shape == (9, 10, 2, 48, 48)
    statics = reader.static_frames()
    files = sorted(p for name in chosen for p in (static / "101_ObjectCategories" / name).glob("*.jpg"))
    assert statics.shape == (len(files), 48, 48) == (30, 48, 48)  # Faces skipped
    label_of = {name: reader.classes.index(name) for name in chosen}
    assert sorted(reader.image_labels.tolist()) == sorted(label_of[f.parent.name] for f in files)
    expected = np.stack([static_frame(read_image(f), (48, 48), "v", "resize") for f in files])
    assert sorted(map(bytes, statics)) == sorted(map(bytes, expected))
    out = store_info(tmp_path / "s", capsys)
    assert "class 'ant': no recordings" in out and "more counts that differ" in out

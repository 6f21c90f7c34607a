"""The trainer end to end on tiny in-memory data: overfit, exact resume, DDP sharding, config, methods."""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tmkt.config import TrainConfig, budget_epochs, config_with, parse_args
from tmkt.errors import BadCheckpoint
from tmkt.evaluate import accuracy_on, eval_loader, load_checkpoint
from tmkt.losses import cka_loss, tet_loss
from tmkt.methods import He2024, MethodConfig, StaticThenEvent, build_method
from tmkt.models import ModelConfig, build_model
from tmkt.train import train

T, H, W = 4, 16, 16


def tiny_data(n_per_class: int = 6, num_classes: int = 2, seed: int = 0):
    """Recordings whose class is where the events are (one quadrant per class), plus matching images."""
    from tmkt.data import MixData

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class).astype(np.int64)
    events = rng.poisson(0.3, size=(len(labels), T, 2, H, W)).astype(np.uint16)
    statics = np.zeros((len(labels), H, W), np.uint8)
    for i, label in enumerate(labels):
        r0, c0 = (label // 2) * (H // 2), (label % 2) * (W // 2)
        events[i, :, :, r0 : r0 + H // 2, c0 : c0 + W // 2] += rng.poisson(
            3.0, (T, 2, H // 2, W // 2)
        ).astype(np.uint16)
        statics[i, r0 : r0 + H // 2, c0 : c0 + W // 2] = 200
    return MixData(
        event_frames=events,
        event_labels=labels,
        static_frames=statics,
        static_labels=labels.copy(),
        static_scale=4.0,  # a static pixel of 255 stands for 4 events
        num_classes=num_classes,
    )


def small_config(out: Path, **overrides) -> TrainConfig:
    base = TrainConfig(
        store="",
        method="tmkt",
        out=str(out),
        backbone="small",
        epochs=2,
        min_steps=0,  # these runs test the loop at exactly `epochs`; the budget rule has its own test
        batch_size=4,
        lr=5e-3,
        augment=False,
        device="cpu",
        num_threads=1,
        checkpoint_every=0,
        log_every=1,
        progress_bar=False,
        ratio_kind="linear",
        ratio_start=0.2,
        ratio_end=0.9,
    )
    return config_with(base, overrides)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_run_overfits_tiny_data_and_writes_its_records(tmp_path):
    data = tiny_data()
    cfg = small_config(tmp_path / "run", epochs=16, lr=1e-2, ratio_start=0.3, ratio_end=1.0)
    result = train(cfg, data, val_data=data)

    model, meta = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # weights_only=True inside
    train_accuracy, n = accuracy_on(model, eval_loader(data, 8, "cpu"), "cpu")
    assert n == len(data.event_labels)
    assert train_accuracy == 1.0
    assert result["val_accuracy"] == 1.0  # validation ran on the same recordings
    assert meta["T"] == T and meta["size"] == [H, W] and meta["classes"] == ["0", "1"]
    assert meta["model_config"]["mag_head"] and meta["model_config"]["mrp_head"]

    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    required = ["method", "seed", "val_accuracy", "test_accuracy", "epochs", "samples_per_s"]
    assert set(required + ["store_snapshot", "backbone", "config"]) <= set(saved)
    assert saved["test_accuracy"] is None and saved["epochs"] == 16 and saved["samples_per_s"] > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["method"] == "tmkt" and "torch" in run["versions"]

    rows = read_rows(tmp_path / "run")
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_accuracy" in r]
    assert [r["epoch"] for r in vals] == list(range(16))
    assert len(steps) == 16 * 3 and all({"mag", "mrp", "cls", "r_m", "lr"} <= set(r) for r in steps)
    # the linear ratio schedule moves r_m from 0.3 toward 1.0; the cosine lr decays
    assert steps[0]["r_m"] == pytest.approx(0.3) and steps[-1]["r_m"] == pytest.approx(0.3 + 0.7 * 47 / 48)
    assert steps[-1]["lr"] < steps[0]["lr"]
    assert np.mean([r["loss"] for r in steps[-6:]]) < np.mean([r["loss"] for r in steps[:6]])
    assert any((tmp_path / "run" / "tb").iterdir())


@pytest.mark.parametrize("method", ["tmkt", "he2024"])
def test_resume_continues_exactly(tmp_path, method):
    data = tiny_data(n_per_class=8)  # 16 recordings, batch 4: 4 steps per epoch, 12 in all
    straight = small_config(tmp_path / "straight", method=method, epochs=3)
    train(straight, data)

    # interrupted mid-epoch 1 (after 6 of 12 steps), then resumed in a new call
    split = small_config(tmp_path / "split", method=method, epochs=3, checkpoint_every=3, max_steps=6)
    first = train(split, data)
    assert first["completed"] is False and first["steps"] == 6
    resumed = train(config_with(split, {"max_steps": 0, "resume": True}), data)
    assert resumed["completed"] is True and resumed["steps"] == 12

    assert_resumed_exactly(tmp_path / "straight", tmp_path / "split", steps=12)


def assert_resumed_exactly(straight: Path, split: Path, steps: int) -> None:
    """The run that was stopped and resumed (``split``) logged a loss at every step 1..``steps``, the
    same losses as the run ``straight`` through, and ended with the same weights."""
    a, b = read_rows(straight), read_rows(split)
    loss_a = [(r["step"], r["loss"]) for r in a if "loss" in r]
    loss_b = [(r["step"], r["loss"]) for r in b if "loss" in r]
    assert [s for s, _ in loss_b] == list(range(1, steps + 1))
    assert np.allclose([v for _, v in loss_a], [v for _, v in loss_b], rtol=1e-5, atol=1e-6)
    weights_a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    weights_b = torch.load(split / "checkpoint.pt", weights_only=True)["model"]
    for key, value in weights_a.items():
        assert torch.allclose(value.float(), weights_b[key].float(), rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize(
    ("method", "logged", "heads"),
    [
        ("tsm", {"cls"}, (False, False)),
        ("tsm+mag", {"cls", "mag"}, (True, False)),
        ("tsm+mrp", {"cls", "mrp"}, (False, True)),
        ("event", {"cls"}, (False, False)),
        ("finetune", {"cls"}, (False, False)),
    ],
)
def test_every_method_trains_with_its_own_terms_and_heads(tmp_path, method, logged, heads):
    result = train(small_config(tmp_path / method, method=method, epochs=2), tiny_data(n_per_class=4))
    assert result["completed"] and result["steps"] == 4
    steps = [r for r in read_rows(tmp_path / method) if "loss" in r]
    assert {k for k in ("cls", "mag", "mrp", "cka") if k in steps[0]} == logged
    mixing = method.startswith("tsm")
    assert all((r["r_m"] is not None) == mixing for r in steps)
    meta = torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)["meta"]
    assert (meta["model_config"]["mag_head"], meta["model_config"]["mrp_head"]) == heads


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    cfg = small_config(Path(out), method="event", epochs=1, record_indices=True)
    train(cfg, tiny_data(n_per_class=8))
    torch.distributed.destroy_process_group()


def test_pure_event_term_adds_a_weighted_event_only_loss(tmp_path):
    out = tmp_path / "l_event"
    cfg = small_config(out, method="tmkt", l_event=0.5, l_mag=0.1, l_mrp=0.2, l_align=0.3, event_ramp=True)
    result = train(cfg, tiny_data(4))
    assert result["completed"] and result["steps"] == 4
    for row in (r for r in read_rows(out) if "loss" in r):
        # event_ramp: the event loss is weighted by r_m, which grows over the run
        event = 0.5 * row["r_m"] * row["event_cls"]
        total = row["cls"] + 0.1 * row["mag"] + 0.2 * row["mrp"] + event + 0.3 * row["cka"]
        assert row["loss"] == pytest.approx(total, rel=1e-5)
        # early in training the mixed sequences are mostly static, so the two terms differ
        assert row["event_cls"] != row["cls"]
    plain = tmp_path / "plain"
    cfg = small_config(plain, method="tmkt", l_event=0.0, epochs=3, val_every=0)
    train(cfg, tiny_data(4), tiny_data(4))
    assert all("event_cls" not in r and "cka" not in r for r in read_rows(plain))
    # val_every=0: validated once, after the last epoch
    assert [r["epoch"] for r in read_rows(plain) if "val_accuracy" in r] == [2]
    with pytest.raises(ValueError, match="with_events"):
        labels = torch.zeros(2, dtype=torch.int64)
        batch = SimpleNamespace(frames=torch.rand(2, T, 2, H, W), events=None, labels=labels)
        batch.mag, batch.mrp = torch.ones(2, T), torch.ones(2)
        model = build_model(ModelConfig(), num_classes=2, T=T)
        build_method(MethodConfig("tmkt", l_event=1.0)).loss(model, batch, 0.5)


def test_tmkt_ramps_the_event_loss_and_aligns_mixed_and_event_features_when_asked():
    torch.manual_seed(0)
    model = build_model(ModelConfig(), num_classes=3, T=T)
    # train mode (an untrained net in eval mode does not spike): each forward normalises by its own
    # batch, so every term can be recomputed from plain forwards of the two sequences
    mixed, events = torch.rand(5, T, 2, H, W) * 4, torch.rand(5, T, 2, H, W) * 4
    labels = torch.tensor([0, 1, 2, 0, 1])
    batch = SimpleNamespace(
        frames=mixed, events=events, labels=labels, mag=torch.ones(5, T), mrp=torch.ones(5)
    )
    progress = 0.9  # late in the run, where the default schedule's r_m is far from 0 and from 1
    with torch.no_grad():
        out_m, out_e = model(mixed.transpose(0, 1)), model(events.transpose(0, 1))
        cka = cka_loss(out_m.features.transpose(0, 1), out_e.features.transpose(0, 1))
        ramp = MethodConfig("tsm", l_event=0.5, l_align=2.0, event_ramp=True)
        both = build_method(ramp).loss(model, batch, progress)
        flat = build_method(MethodConfig("tsm", l_event=0.5, l_align=2.0)).loss(model, batch, progress)
        cka_only = build_method(MethodConfig("tsm", l_event=0.0, l_align=2.0)).loss(model, batch, progress)
        neither = build_method(MethodConfig("tsm", l_event=0.0))
    assert 0.0 < cka.item() < 1.0 and both["cka"] == pytest.approx(cka.item(), rel=1e-5)
    cls, event_cls = tet_loss(out_m.logits, labels), tet_loss(out_e.logits, labels)
    r_m = MethodConfig().schedule(progress)  # progress^8 by default
    assert r_m == pytest.approx(0.9**8)
    assert both["loss"] == pytest.approx((cls + 0.5 * r_m * event_cls + 2.0 * cka).item(), rel=1e-5)
    assert flat["loss"] == pytest.approx((cls + 0.5 * event_cls + 2.0 * cka).item(), rel=1e-5)
    # the event forward runs for the CKA term alone; only the terms with a weight are reported
    assert "event_cls" not in cka_only and cka_only["loss"] == pytest.approx(
        (cls + 2.0 * cka).item(), rel=1e-5
    )
    assert not neither.wants_events
    # off by default: they help with 5 recordings per class and cost accuracy with 25
    assert (MethodConfig().event_ramp, MethodConfig().l_align) == (False, 0.0)


def test_default_budget_trains_a_tiny_store_for_at_least_min_steps(tmp_path):
    """The rule: a run makes max(epochs * steps per epoch, min_steps) optimizer steps (whole epochs), so
    with the defaults every store, however small, gets at least 480 steps."""
    defaults = TrainConfig()
    assert defaults.min_steps >= 480
    assert budget_epochs(defaults, steps_per_epoch=4) == max(defaults.epochs, -(-defaults.min_steps // 4))
    assert budget_epochs(defaults, steps_per_epoch=1000) == defaults.epochs  # large sets: epochs rule

    data = tiny_data(n_per_class=3)  # 6 recordings: one step per epoch at the default batch size
    assert len(data.event_labels) < defaults.batch_size
    out = tmp_path / "defaults"
    cfg = config_with(TrainConfig(), {"store": "", "out": str(out), "device": "cpu", "progress_bar": False})
    # event-only and the small backbone keep the 480 steps quick; the budget rule is the same for all
    cfg = config_with(cfg, {"method": "event", "backbone": "small", "checkpoint_every": 0, "log_every": 1000})
    result = train(cfg, data)
    assert result["completed"] and result["steps"] >= defaults.min_steps
    assert result["steps"] == result["epochs"] == defaults.min_steps  # one step per epoch
    recorded = json.loads((out / "run.json").read_text())["config"]
    assert recorded["epochs"] == defaults.min_steps and recorded["min_steps"] == defaults.min_steps


def test_ddp_two_processes_train_on_disjoint_shards(tmp_path):
    out = tmp_path / "ddp"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    seen = []
    for rank in range(2):
        rows = [json.loads(x) for x in (out / f"indices_rank{rank}.jsonl").read_text().splitlines()]
        seen.append([i for row in rows for i in row["index"]])
    assert len(seen[0]) == len(seen[1]) == 8  # 16 recordings, one shard per rank
    assert set(seen[0]).isdisjoint(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(16))
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    torch.load(out / "checkpoint.pt", weights_only=True)


def test_config_file_then_overrides_are_typed(tmp_path):
    toml = tmp_path / "cfg.toml"
    toml.write_text('method = "he2024"\nepochs = 3\nlr = 0.01\nl_cka = 0.5\n')
    cfg = parse_args(
        [
            "--store",
            "s",
            "--config",
            str(toml),
            "--epochs",
            "5",
            "augment=false",
            "l_cka=2",
            "ratio-kind=cosine",
        ]
    )
    assert (cfg.method, cfg.epochs, cfg.lr, cfg.l_cka, cfg.augment) == ("he2024", 5, 0.01, 2.0, False)
    assert cfg.ratio_kind == "cosine" and isinstance(cfg.l_cka, float)
    js = tmp_path / "cfg.json"
    js.write_text(json.dumps({"batch_size": 7, "compile": True}))
    cfg = parse_args(["--store", "s", "--config", str(js), "--method", "event"])
    assert (cfg.batch_size, cfg.compile, cfg.method) == (7, True, "event")
    with pytest.raises(ValueError, match="unknown config key"):
        parse_args(["--store", "s", "learning_rate=0.1"])
    with pytest.raises(ValueError, match="expects int"):
        parse_args(["--store", "s", "epochs=many"])
    with pytest.raises(ValueError, match="expects a boolean"):
        parse_args(["--store", "s", "augment=maybe"])
    with pytest.raises(ValueError, match="unknown method"):
        config_with(TrainConfig(), {"method": "mixup"})


def method_named(name: str, **options):
    return build_method(MethodConfig(name, **options))


def test_methods_need_their_loader_modes_and_heads():
    assert method_named("tmkt").mode_for_epoch(0, 10) == "mix"
    assert (method_named("tsm").mag_head, method_named("tsm").mrp_head) == (False, False)
    assert (method_named("tsm+mag").mag_head, method_named("tsm+mrp").mrp_head) == (True, True)
    assert method_named("tsm+mag").mrp_head is False
    finetune = method_named("finetune", finetune_static_fraction=0.3)
    assert isinstance(finetune, StaticThenEvent)
    assert [finetune.mode_for_epoch(e, 10) for e in range(10)] == ["static"] * 3 + ["event"] * 7
    assert method_named("he2024").mode_for_epoch(5, 10) == "pair"
    with pytest.raises(ValueError, match="unknown method"):
        method_named("dann")


def test_he2024_replaces_whole_samples_with_probability_progress_cubed():
    torch.manual_seed(0)
    model = build_model(ModelConfig(mag_head=False, mrp_head=False), num_classes=3, T=T)
    model.eval()  # batch-statistics free, so the 2B forward equals separate forwards
    static = torch.rand(5, T, 2, H, W) * 4
    events = torch.rand(5, T, 2, H, W) * 4
    labels = torch.tensor([0, 1, 2, 0, 1])
    batch = SimpleNamespace(frames=events, static=static, labels=labels)
    method = He2024(l_cka=0.5, tet_mse_weight=0.0)
    with torch.no_grad():
        out_s = model(static.transpose(0, 1))
        out_e = model(events.transpose(0, 1))
        start, end = method.loss(model, batch, 0.0), method.loss(model, batch, 1.0)
    assert start["event_share"] == 0.0 and end["event_share"] == 1.0
    cka = cka_loss(out_s.features.transpose(0, 1), out_e.features.transpose(0, 1))
    assert start["cls"] == pytest.approx(tet_loss(out_s.logits, labels).item(), rel=1e-5)
    assert end["cls"] == pytest.approx(tet_loss(out_e.logits, labels).item(), rel=1e-5)
    assert end["loss"] == pytest.approx((tet_loss(out_e.logits, labels) + 0.5 * cka).item(), rel=1e-5)
    torch.manual_seed(1)
    many = SimpleNamespace(
        frames=torch.rand(64, T, 2, 8, 8),
        static=torch.rand(64, T, 2, 8, 8),
        labels=torch.zeros(64, dtype=torch.int64),
    )
    with torch.no_grad():
        shares = [float(method.loss(model, many, 0.5 ** (1 / 3))["event_share"]) for _ in range(3)]
    assert 0.35 < np.mean(shares) < 0.65  # P(event) = progress^3 = 0.5 (192 draws, std 0.036)


def write_frames_store(path: Path, data, splits: np.ndarray, classes: list[str]) -> str:
    """A store holding just what training and evaluation read: labels, splits and frames."""
    from storage.schema import FrameSpec
    from storage.writer import Transaction

    n = len(data.event_labels)
    spec = FrameSpec(time_bins=T, size=(H, W))
    with Transaction(path) as tx:
        tx.write_array("events/offsets", np.zeros(n + 1, np.int64))
        tx.write_array("events/label", data.event_labels.astype(np.int16))
        tx.write_array("events/split", splits.astype(np.uint8))
        tx.write_array("images/label", data.static_labels.astype(np.int16))
        tx.write_array("images/split", np.zeros(len(data.static_labels), np.uint8))
        group = tx.root.require_group(f"frames/{spec.key}")
        group.attrs.update(spec.to_attrs())
        tx.create_array(f"frames/{spec.key}/events", data.event_frames.shape, np.uint16)[:] = (
            data.event_frames
        )
        tx.write_array(f"frames/{spec.key}/static", data.static_frames)
        tx.root.attrs.update({"classes": classes, "frames_key": spec.key, "source": "test"})
        return tx.commit("tiny frames store")


def test_store_run_then_eval_on_any_compatible_store(tmp_path, capsys):
    from tmkt.config import main as train_main
    from tmkt.errors import EmptySplit
    from tmkt.evaluate import IncompatibleStore, evaluate
    from tmkt.evaluate import main as eval_main

    data = tiny_data(n_per_class=12, seed=3)
    splits = np.tile([0, 0, 0, 0, 1, 2], 4)  # per class: 8 train, 2 val, 2 test
    store = tmp_path / "store"
    snapshot = write_frames_store(store, data, splits, ["left", "right"])
    out = tmp_path / "run"
    flags = ["--store", str(store), "--method", "tmkt", "--out", str(out), "--epochs", "6"]
    overrides = ["backbone=small", "batch_size=4", "lr=0.01", "augment=false", "device=cpu", "log_every=5"]
    overrides += ["min_steps=0"]
    train_main(flags + overrides + ["progress_bar=false"])
    result = json.loads((out / "result.json").read_text())
    assert result["store_snapshot"] == snapshot
    assert result["test_accuracy"] is not None and result["val_accuracy"] is not None
    capsys.readouterr()

    on_test = evaluate(out / "checkpoint.pt", store, split="test")
    assert on_test["n"] == 4 and on_test["split"] == "test" and on_test["trained_on"] == 0
    assert on_test["accuracy"] == result["test_accuracy"]
    # every recording of the training store: the result counts the 16 it trained on
    on_all = evaluate(out / "checkpoint.pt", store, split="all")
    assert on_all["n"] == 24 and on_all["trained_on"] == 16
    # "unused": what the run did not train on; with every training recording used, the val split
    on_unused = evaluate(out / "checkpoint.pt", store, split="unused")
    assert on_unused["n"] == 4 and on_unused["accuracy"] == result["val_accuracy"]

    # a store of the same classes and representation without a test split: an error, never a fallback
    other = tmp_path / "other"
    write_frames_store(other, data, np.zeros(len(splits)), ["left", "right"])
    with pytest.raises(EmptySplit, match="split 'test' .* holds no recording"):
        evaluate(out / "checkpoint.pt", other)
    # unless every recording is asked for by name
    argv = ["--checkpoint", str(out / "checkpoint.pt"), "--store", str(other), "--split", "all"]
    assert eval_main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 24 and printed["split"] == "all" and printed["trained_on"] is None
    assert eval_main(argv) == 0
    assert capsys.readouterr().out.startswith(
        f"accuracy {printed['accuracy']:.4f} on 24 recordings of split 'all'"
    )

    with pytest.raises(IncompatibleStore, match="snapshot the checkpoint trained on"):
        evaluate(out / "checkpoint.pt", other, split="unused")

    renamed = tmp_path / "renamed"
    write_frames_store(renamed, data, splits, ["up", "down"])
    with pytest.raises(IncompatibleStore, match="classes"):
        evaluate(out / "checkpoint.pt", renamed)


def test_bench_train_reports_every_backbone(tmp_path):
    from benches.train import main as bench_main

    store = tmp_path / "store"
    data = tiny_data(n_per_class=4)
    write_frames_store(store, data, np.zeros(8), ["left", "right"])
    out = tmp_path / "bench.json"
    assert (
        bench_main(
            [
                "--store",
                str(store),
                "--json",
                str(out),
                "--steps",
                "1",
                "--warmup",
                "1",
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["frames_shape"] == [T, 2, H, W]
    assert set(report["backbones"]) == {"small", "cnn3", "vgg_snn", "resnet18"}
    for row in report["backbones"].values():
        assert row["samples_per_s"] > 0 and 0.0 <= row["data_wait_fraction"] < 1.0
        assert row["loader"] == "MixLoader" and "compiled" not in row  # resident, eager only


def _fake_run(
    root: Path, method: str, seed: int, curve: list[float], test: float | None, counts: dict | None = None
) -> Path:
    run = root / f"{method}-{seed}"
    run.mkdir(parents=True)
    rows = [{"step": 3 * (e + 1), "epoch": e, "loss": 1.0} for e in range(len(curve))]
    rows += [{"step": 3 * (e + 1), "epoch": e, "val_accuracy": acc} for e, acc in enumerate(curve)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {"method": method, "seed": seed, "val_accuracy": curve[-1], "test_accuracy": test, "config": {}}
    (run / "result.json").write_text(json.dumps({**result, **(counts or {})}))
    return run


def test_the_table_carries_firing_rate_and_synops_per_method(tmp_path):
    from tmkt.plots import results_table

    runs = [_fake_run(tmp_path, "tmkt", seed, [0.5], None) for seed in (0, 1)]
    for run, rate, synops in zip(runs, (0.10, 0.20), (2.0e6, 4.0e6), strict=True):
        result = json.loads((run / "result.json").read_text())
        result["energy"] = {"firing_rate": rate, "synops": synops}
        (run / "result.json").write_text(json.dumps(result))
    # firing rate 15.00 ± 7.07 %; SynOps 3.00 ± 1.41 million
    assert "| tmkt | 2 | ? | ? | 50.00 ± 0.00 | ? | n/a | 15.00 ± 7.07 | 3.00 ± 1.41 |" in results_table(runs)


def test_plots_and_table_aggregate_seeds(tmp_path):
    from tmkt.plots import group_runs, plot_curves, results_table

    runs = [
        _fake_run(tmp_path, "tmkt", 0, [0.5, 0.8], 0.70, {"train_n": 50, "val_n": 20, "test_n": 30}),
        _fake_run(tmp_path, "tmkt", 1, [0.6, 0.9], 0.80, {"train_n": 48, "val_n": 20, "test_n": 30}),
        _fake_run(tmp_path, "event", 0, [0.4, 0.6], None),
    ]
    table = results_table(runs)
    # mean 85.00, sample std of (80, 90) = 7.07; test: mean 75.00 +- 7.07; one seed has no spread;
    # n per split: one value, a range when seeds differ, "?" for runs that did not record it
    assert "| tmkt | 2 | 48-50 | 20 | 85.00 ± 7.07 | 30 | 75.00 ± 7.07 |" in table
    assert "| event | 1 | ? | ? | 60.00 | ? | n/a | n/a | n/a |" in table
    assert group_runs(runs)["tmkt"][1].curve == {0: 0.6, 1: 0.9}
    png = plot_curves(runs, tmp_path / "plots" / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


class _RunsCode:
    """Unpickling this writes a marker file: what a crafted checkpoint could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_runs_code_from_a_crafted_checkpoint(tmp_path):
    data = tiny_data(n_per_class=4)
    config = small_config(tmp_path / "run", method="tmkt", epochs=2, checkpoint_every=1, max_steps=1)
    train(config, data)
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)  # what the trainer writes is safe
    marker = tmp_path / "pwned"
    ckpt["metrics_lines"] = _RunsCode(str(marker))
    torch.save(ckpt, tmp_path / "run" / "ckpt.pt")
    with pytest.raises(BadCheckpoint, match="Python objects other than tensors") as raised:
        train(config_with(config, {"max_steps": 0, "resume": True}), data)
    assert isinstance(raised.value.__cause__, pickle.UnpicklingError)  # refused by weights_only=True
    assert not marker.exists()


@pytest.mark.slow
def test_bench_train_streams_under_a_budget_and_times_the_compiled_model(tmp_path):
    """With a budget below the split the bench trains through the streaming loader (as `tmkt train`
    would), and ``--compile`` adds the same backbone under torch.compile with the ratio."""
    from benches.train import main as bench_main

    store = tmp_path / "store"
    data = tiny_data(n_per_class=8)
    write_frames_store(store, data, np.zeros(16), ["left", "right"])
    out = tmp_path / "bench.json"
    argv = ["--store", str(store), "--json", str(out), "--steps", "2", "--warmup", "1", "--batch-size", "4"]
    argv += ["--device", "cpu", "--backbones", "small", "--max-resident-bytes", "20000", "--compile"]
    assert bench_main(argv) == 0
    row = json.loads(out.read_text())["backbones"]["small"]
    assert row["loader"] == "StreamingLoader" and row["compiled"]["loader"] == "StreamingLoader"
    assert row["compiled_speedup"] == pytest.approx(row["compiled"]["samples_per_s"] / row["samples_per_s"])
    assert row["compiled"]["samples_per_s"] > 0

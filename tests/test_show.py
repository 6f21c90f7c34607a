"""`tmkt store show`: pictures of a store's event frames, static images and mixed sequences."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flows.cli import main as cli_main
from tests.test_loader import write_frames_store
from tmkt.plots import POLARITY_COLOURS, ShowConfig, load_sequence, sequence_figure, write_sequence

T, H, W = 4, 16, 12
ON_AT, OFF_AT = (3, 2), (11, 8)  # (row, column) of the ON and OFF events in every bin


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Three recordings (splits train, val, train) with ON events top-left and OFF events bottom-right,
    and two static images per class, written by the project's store writer."""
    events = np.zeros((3, T, 2, H, W), np.uint16)
    for t in range(T):
        events[:, t, 1][:, ON_AT[0], ON_AT[1]] = 5 + t
        events[:, t, 0][:, OFF_AT[0], OFF_AT[1]] = 5 + t
    statics = np.zeros((6, H, W), np.uint8)
    statics[:, 5:10, 4:8] = 200
    path = tmp_path_factory.mktemp("show") / "store"
    write_frames_store(path, events, [0, 1, 2], [0, 1, 0], statics, [0, 1, 2, 0, 1, 2])
    return str(path)


def panel_pixel(fig, ax, image: np.ndarray, row: int, col: int) -> np.ndarray:
    """The RGB the saved picture shows at frame pixel (row, col) of panel ``ax``."""
    x, y = ax.transData.transform((col, row))
    height = image.shape[0]
    return image[int(round(height - y)), int(round(x))]


def test_png_has_a_panel_per_bin_in_polarity_colours(store, tmp_path):
    seq = load_sequence(store, ShowConfig(index=1, split="train"))  # recording 2
    assert seq.frames.shape == (T, 2, H, W) and "recording 2" in seq.title
    fig, panels = sequence_figure(seq)
    out = tmp_path / "events.png"
    fig.savefig(out, dpi=100)
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape[:2] == tuple(np.round(fig.get_size_inches()[::-1] * 100).astype(int))
    assert len(panels) == T
    on, off = np.array(POLARITY_COLOURS[1]) * 255, np.array(POLARITY_COLOURS[0]) * 255
    for t, ax in enumerate(panels):
        bright = (5 + t) / (5 + T - 1)  # counts scaled by the sequence's maximum
        np.testing.assert_allclose(panel_pixel(fig, ax, image, *ON_AT), on * bright, atol=3)
        np.testing.assert_allclose(panel_pixel(fig, ax, image, *OFF_AT), off * bright, atol=3)
        assert panel_pixel(fig, ax, image, 0, 0).tolist() == [0, 0, 0], "no events: black"
    # the written PNG is that figure
    written = write_sequence(seq, tmp_path / "again.png")
    assert Image.open(written).size == Image.open(out).size


def test_mixed_sequence_is_grey_static_then_coloured_events(store, tmp_path):
    seq = load_sequence(store, ShowConfig(index=0, kind="mixed", cut=3))
    assert seq.step_titles == ["t=1 static", "t=2 static", "t=3 events", "t=4 events"]
    np.testing.assert_array_equal(seq.frames[0, 0], seq.frames[0, 1])  # static: both channels
    assert seq.frames[0, 0, 7, 5] > 0 and seq.frames[0, 0, 0, 0] == 0
    fig, panels = sequence_figure(seq)
    fig.savefig(tmp_path / "mixed.png", dpi=100)
    image = np.asarray(Image.open(tmp_path / "mixed.png").convert("RGB")).astype(int)
    grey = panel_pixel(fig, panels[0], image, 7, 5)
    assert grey[0] == grey[1] == grey[2] > 0
    assert panel_pixel(fig, panels[2], image, 7, 5).tolist() == [0, 0, 0]
    red = panel_pixel(fig, panels[2], image, *ON_AT)
    assert red[0] > 100 and red[1] < 10 and red[2] < 10


def test_cli_writes_a_gif_with_a_frame_per_bin_and_a_static_png(store, tmp_path, capsys):
    gif = tmp_path / "rec.gif"
    assert cli_main(["store", "show", store, "--index", "0", "--split", "val", "--out", str(gif)]) == 0
    assert f"wrote {gif}" in capsys.readouterr().out
    with Image.open(gif) as picture:
        assert picture.n_frames == T
        frames = []
        for k in range(T):
            picture.seek(k)
            frames.append(np.asarray(picture.convert("RGB")).astype(int))
    assert all(f.shape == frames[0].shape for f in frames) and frames[0].shape[0] > 100
    assert not np.array_equal(frames[0], frames[-1]), "the bins differ (counts and titles)"
    png = tmp_path / "static.png"
    assert cli_main(["store", "show", store, "--index", "4", "--kind", "static", "--out", str(png)]) == 0
    seq = load_sequence(store, ShowConfig(index=4, kind="static"))
    assert len(seq.frames) == 1 and seq.title.startswith("static image 4")
    assert Image.open(png).size == (round(fig_width(1) * 100), round(fig_height(1) * 100))


def fig_width(panels: int) -> float:
    return 1.6 * panels + 1.6


def fig_height(rows: int) -> float:
    return 1.6 * rows + 1.1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--index", "9"], "recording index 9 out of range: the store holds 3"),
        (["--index", "1", "--split", "val"], "split 'val' holds 1"),
        (["--index", "0", "--split", "dev"], "unknown split 'dev'"),
        (["--index", "0", "--kind", "video"], "kind must be one of"),
        (["--index", "0", "--kind", "mixed", "--cut", "9"], "cut must lie in 1..5"),
        (["--index", "0", "--frames-key", "nope"], "no frames with key 'nope'"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(store, tmp_path, capsys, argv, message):
    assert cli_main(["store", "show", store, *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()

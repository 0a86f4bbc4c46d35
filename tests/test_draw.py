"""Pictures a person can read (issue 18 item 4): the heat overlay's opacity follows the heat, text stands on a
plate that reads on any background, score plots label their axes and name the ground truth and the alarm
threshold in their legend, frame pictures carry a title, a legend and the heat's colour key."""

from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

from stprompt import draw, evaluate
from stprompt.data.annotations import Video
from stprompt.runtime.sinks import annotate, caption

matplotlib.use("Agg")


def frame(value: int, h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_heat_overlay_opacity_follows_the_heat():
    img = frame(128)
    heat = np.zeros((120, 160), np.float32)
    heat[:, 40:80], heat[:, 80:120], heat[:, 120:] = 0.3, 0.6, 1.0
    out = draw.overlay_heat(img, heat)
    change = np.abs(out.astype(int) - img).sum(axis=2)
    assert change[:, :40].max() == 0  # no heat: the frame as it was, not a tint
    assert change[:, 40:80].mean() < change[:, 80:120].mean() < change[:, 120:].mean()
    flat = draw.overlay_heat(img, np.full((120, 160), 0.05, np.float32))
    assert np.abs(flat.astype(int) - img).max() <= 0.05 * draw.HEAT_ALPHA * 255 + 1  # a cold map stays faint


@pytest.mark.parametrize("background", [0, 255, 128])
def test_labels_read_on_any_background(background):
    img = frame(background)
    w, h = draw.put_label(img, "score 0.42", (0, 0))
    plate = img[:h, :w].astype(int).sum(axis=2) / 3
    text, ground = plate > 200, plate < 40
    assert text.sum() > 20 and ground.sum() > text.sum()  # light glyphs on a dark plate
    assert (img[h:, :] == background).all() and (img[:, w:] == background).all()


def test_a_label_wider_than_the_frame_is_shrunk_not_cut():
    img = frame(255, 60, 80)
    w, _ = draw.put_label(img, "a caption far wider than this small frame", (0, 0))
    assert w <= 80


def test_annotated_frame_says_what_the_bar_means():
    event = {"source": "/data/cam/gate.mp4", "frame": 44, "score": 0.42, "class": "normal"}
    text = caption(event, 0.5)
    assert text.splitlines() == ["gate.mp4  frame 44", "score 0.42 < alarm 0.50  top class normal"]
    assert "score 0.71 >= alarm 0.50  top class Fighting" in caption({**event, "score": 0.71, "class": "Fighting"}, 0.5)
    snippet = SimpleNamespace(image=frame(255), heat=None, boxes=None, event=event)
    img = annotate(snippet, 0.5)
    assert (img[40:, :] == 255).all()  # bar and caption at the top, the rest of the frame untouched
    assert (img[: 120 // 40, :30] == draw.GREEN).all()  # below the threshold: a green bar


def prediction(anomalies):
    video = Video(path="videos/test_1_Fighting.mp4", split="test", labels=["Fighting"] if anomalies else ["normal"],
                  anomalies=anomalies)  # fmt: skip
    t = 8
    return evaluate.VideoPrediction(video, np.arange(t) * 4 + 2, np.linspace(0.1, 0.9, t), np.full(t, 0.3),
                                    np.full((t, 2), 0.5))  # fmt: skip


@pytest.mark.parametrize("anomalies", [[(8, 20)], []])
def test_score_plot_names_every_mark(anomalies):
    fig = evaluate.score_figure(prediction(anomalies), 4, threshold=0.6)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlabel() == "frame" and ax.get_ylabel() == "anomaly score" and ax.get_title()
    assert "alarm threshold 0.6" in labels and any(label.startswith("ground truth") for label in labels)
    assert any("A-branch" in label for label in labels) and any("C-branch" in label for label in labels)
    assert any(list(line.get_ydata()) == [0.6, 0.6] for line in ax.get_lines())  # the threshold is drawn
    assert ("(none)" in " ".join(labels)) == (not anomalies)


def test_frame_picture_has_title_legend_and_colour_key():
    fig = evaluate.frame_figure(frame(90), "video frame 12", [[10, 10, 50, 50]], [], "predicted box: none (why)")
    ax, key = fig.axes
    assert ax.get_title() == "video frame 12"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ground truth box", "predicted box: none (why)"]
    assert "heat" in key.get_ylabel()
    cmap = evaluate.heat_colour_key()
    assert cmap(0.0)[3] == 0 and cmap(1.0)[3] == pytest.approx(draw.HEAT_ALPHA)  # the key fades as the overlay does

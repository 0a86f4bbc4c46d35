"""Box import from the real annotation layouts (fixtures_boxes) and `stp-eval --localize` without boxes.

TIoU needs ground-truth boxes; these tests pin that each importer reads them from the files the datasets really
ship, that a pickle is read without running code, and that a missing box source is said, not a silent null.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fixtures_boxes import (
    LIU_MA_REAL,
    SH_SIZE,
    UB_SIZE,
    liu_ma_pickle,
    liu_ma_table,
    shanghaitech_tree,
    ubnormal_tree,
    ucf_tree,
    write,
    write_liu_ma,
)

from stprompt.data.annotations import load, validate
from stprompt.data.import_cli import main as import_main
from stprompt.data.importers import import_shanghaitech, import_ubnormal, import_ucf_crime
from stprompt.errors import UserError


def _by_name(ann) -> dict:
    return {Path(v.path).stem: v for v in ann.videos}


# ----------------------------------------------------------------------------- UCF-Crime, Liu & Ma


def test_fixture_pickle_has_the_real_files_opcodes():
    """The real Test_annotation.pkl holds only these opcodes (pickletools on the file from xuzero's repository)."""
    ops = Counter(op.name for op, _, _ in pickletools.genops(liu_ma_pickle(liu_ma_table(LIU_MA_REAL))))
    assert set(ops) == {"MARK", "DICT", "PUT", "STRING", "LIST", "APPEND", "INT", "SETITEM", "STOP"}
    assert ops["SETITEM"] == len(LIU_MA_REAL) and ops["STRING"] == len(LIU_MA_REAL) + 10
    one = liu_ma_pickle({"A001_x264": [["/x/image_0016.jpg", 1, 2, 3, 4]]})
    assert one.startswith(b"(dp0\nS'A001_x264'\np1\n(lp2\n(lp3\nS'/x/image_0016.jpg'\np4\naI1\naI2\naI3\naI4\naas.")


def test_ucf_boxes_from_liu_ma_test_pickle(tmp_path, capsys):
    root = ucf_tree(tmp_path / "ucf")
    pkl = write_liu_ma(tmp_path / "UCFCrime_BoundingBox_Annotation/Test_annotation.pkl", LIU_MA_REAL)
    ann = import_ucf_crime(root, boxes_dir=pkl)
    v = _by_name(ann)
    # the frame is the image number, in the temporal annotation's numbering: 165..240 holds 180..228
    assert v["Abuse028_x264"].boxes == {
        180: [[3.0, 83.0, 82.0, 150.0]],
        196: [[1.0, 83.0, 83.0, 137.0]],
        212: [[1.0, 84.0, 86.0, 156.0]],
        228: [[1.0, 81.0, 95.0, 163.0]],
    }
    assert v["Abuse028_x264"].anomalies == [(165, 241)]
    assert v["Shoplifting010_x264"].boxes[1874] == [[72.0, 79.0, 121.0, 167.0]]
    assert set(v["Arrest001_x264"].boxes) == {1216, 1408, 1472}
    assert not v["Normal_Videos_003_x264"].boxes and not v["Abuse001_x264"].boxes
    validate(ann.to_json())
    assert capsys.readouterr().err == ""  # every box lies in its video's temporal annotation, all keys match


def test_ucf_boxes_from_a_clone_of_the_repository(tmp_path):
    root = ucf_tree(tmp_path / "ucf")
    clone = tmp_path / "UCFCrime_BoundingBox_Annotation"
    write_liu_ma(clone / "Test_annotation.pkl", LIU_MA_REAL)
    write_liu_ma(clone / "Train_annotation.pkl", {"Abuse001_x264": [(16, 1, 2, 3, 4)]})
    write(clone / "README.md", "# UCFCrime_Annotation\n")
    v = _by_name(import_ucf_crime(root, boxes_dir=clone))
    assert len(v["Arrest001_x264"].boxes) == 3 and not v["Abuse001_x264"].boxes  # training boxes are not read


def test_ucf_train_pickle_instead_of_test_is_an_error(tmp_path):
    root = ucf_tree(tmp_path / "ucf")
    pkl = write_liu_ma(tmp_path / "Train_annotation.pkl", {"Abuse001_x264": [(16, 1, 2, 3, 4)]})
    with pytest.raises(UserError, match=r"none of the 1 videos in .*Train_annotation.pkl.*Test_annotation.pkl"):
        import_ucf_crime(root, boxes_dir=pkl)


def test_ucf_boxes_outside_the_temporal_annotation_are_reported(tmp_path, capsys):
    root = ucf_tree(tmp_path / "ucf")
    pkl = write_liu_ma(tmp_path / "Test_annotation.pkl", {**LIU_MA_REAL, "Abuse028_x264": [(100, 1, 2, 3, 4)]})
    import_ucf_crime(root, boxes_dir=pkl)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside their temporal annotation" in err and "Abuse028_x264" in err


def test_ucf_pickle_with_numpy_numbers_and_unicode_keys(tmp_path):
    """Re-saved copies (Python 3, numpy scalars, unicode keys as in Train_annotation.pkl) read the same."""
    root = ucf_tree(tmp_path / "ucf")
    table = {k: [[e[0], *(np.int64(x) for x in e[1:])] for e in rows] for k, rows in liu_ma_table(LIU_MA_REAL).items()}
    for protocol in (2, 5):
        pkl = tmp_path / f"p{protocol}.pkl"
        pkl.write_bytes(pickle.dumps(table, protocol=protocol))
        v = _by_name(import_ucf_crime(root, boxes_dir=pkl))
        assert v["Abuse028_x264"].boxes[180] == [[3.0, 83.0, 82.0, 150.0]]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_data_pickles_may_hold_numpy_arrays(tmp_path, protocol):
    from stprompt.data.importers import _read_data_pickle

    doc = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": {np.float32(1.5), 2}, "c": (1j, "x")}
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(doc, protocol=protocol))
    back = _read_data_pickle(path)
    np.testing.assert_array_equal(back["a"], doc["a"])
    assert back["a"].dtype == np.int16 and back["b"] == {1.5, 2} and back["c"] == (1j, "x")


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_ucf_pickle_that_would_run_code_is_refused(tmp_path):
    root = ucf_tree(tmp_path / "ucf")
    target = tmp_path / "created_by_the_pickle"
    pkl = tmp_path / "Test_annotation.pkl"
    pkl.write_bytes(pickle.dumps({"Abuse028_x264": [["/x/image_0180.jpg", 1, 2, 3, 4]], "x": _Exploit(target)}))
    with pytest.raises(UserError, match=r"Test_annotation.pkl: refused to load (posix|nt).mkdir"):
        import_ucf_crime(root, boxes_dir=pkl)
    assert not target.exists()


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([1, 2], "expected Liu & Ma's box layout"),
        ({"Abuse028_x264": [["/x/image_0180.jpg", 1, 2, 3]]}, r"Abuse028_x264\[0\]: expected \[image path"),
        ({"Abuse028_x264": [["/x/image_0180.jpg", 5, 2, 3, 4]]}, r"Abuse028_x264\[0\]: box needs x1 < x2"),
        ({"Abuse028_x264": [["/x/image.jpg", 1, 2, 3, 4]]}, "no frame number"),
        ({"Abuse028_x264": [[180, 1, 2, 3, 4]]}, r"Abuse028_x264\[0\]: expected \[image path"),
    ],
)
def test_ucf_malformed_pickle_names_the_entry(tmp_path, doc, needle):
    root = ucf_tree(tmp_path / "ucf")
    pkl = tmp_path / "Test_annotation.pkl"
    pkl.write_bytes(pickle.dumps(doc, protocol=0))
    with pytest.raises(UserError, match=needle):
        import_ucf_crime(root, boxes_dir=pkl)


def test_ucf_truncated_pickle_is_a_user_error(tmp_path):
    root = ucf_tree(tmp_path / "ucf")
    pkl = tmp_path / "Test_annotation.pkl"
    pkl.write_bytes(liu_ma_pickle(liu_ma_table(LIU_MA_REAL))[:300])
    with pytest.raises(UserError, match="is not a readable pickle"):
        import_ucf_crime(root, boxes_dir=pkl)


def test_ucf_boxes_folder_without_boxes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither Test_annotation.pkl"):
        import_ucf_crime(ucf_tree(tmp_path / "ucf"), boxes_dir=tmp_path / "empty")


def test_cli_summary_says_whether_test_videos_have_boxes(tmp_path, capsys):
    root = ucf_tree(tmp_path / "ucf")
    assert import_main(["ucf-crime", str(root)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test 4 videos (3 anomalous), none with boxes" in err[0]
    assert "no TIoU" in err[0] and "--boxes Test_annotation.pkl" in err[0]
    pkl = write_liu_ma(tmp_path / "Test_annotation.pkl", LIU_MA_REAL)
    assert import_main(["ucf-crime", str(root), "--boxes", str(pkl)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test 4 videos (3 anomalous), 3 with boxes" in err[0]
    assert _by_name(load(root / "annotations.json"))["Abuse028_x264"].boxes[180] == [[3.0, 83.0, 82.0, 150.0]]


# ----------------------------------------------------------------------------- ShanghaiTech


def _sh_masks(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    pixel = np.zeros((n, *SH_SIZE), dtype=np.uint8)
    pixel[2, 100:180, 300:340] = 1  # a person -> [300, 100, 340, 180]
    pixel[2, 400:402, 850:856] = 1  # at the right edge -> [850, 400, 856, 402]
    pixel[3, 101:181, 304:344] = 1
    frame = np.array([0, 0, 1, 1, 0][:n], dtype=np.int64)
    return pixel, frame


def test_shanghaitech_boxes_from_the_real_mask_layout(tmp_path, capsys):
    pixel, frame = _sh_masks()
    root = shanghaitech_tree(tmp_path / "shanghaitech", pixel, frame)
    assert import_main(["shanghaitech", str(root)]) == 0
    assert "test 2 videos (1 anomalous), 1 with boxes" in capsys.readouterr().err
    v = _by_name(load(root / "annotations.json"))
    assert v["01_0014"].anomalies == [(2, 4)]
    assert v["01_0014"].boxes == {
        2: [[300.0, 100.0, 340.0, 180.0], [850.0, 400.0, 856.0, 402.0]],
        3: [[304.0, 101.0, 344.0, 181.0]],
    }
    assert v["01_0014"].path == "testing/frames/01_0014" and not v["01_0015"].boxes


def test_shanghaitech_pixel_mask_in_another_layout_is_refused(tmp_path):
    pixel, frame = _sh_masks()
    root = shanghaitech_tree(tmp_path / "shanghaitech", np.ascontiguousarray(pixel.transpose(1, 2, 0)), frame)
    with pytest.raises(UserError, match=r"01_0014.npy: pixel mask has shape \(480, 856, 5\) but the frame mask has 5"):
        import_shanghaitech(root)


def test_shanghaitech_without_pixel_masks_says_so(tmp_path, capsys):
    pixel, frame = _sh_masks()
    root = shanghaitech_tree(tmp_path / "shanghaitech", pixel, frame)
    shutil.rmtree(root / "testing/test_pixel_mask")
    assert import_main(["shanghaitech", str(root)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none with boxes" in err and "test_pixel_mask" in err


# ----------------------------------------------------------------------------- UBnormal


def _ub_mask(objects: dict[int, list[tuple[int, int, int, int]]]) -> np.ndarray:
    """An object mask: each id painted over its (x1, y1, x2, y2) rectangles."""
    img = np.zeros(UB_SIZE, dtype=np.uint8)
    for object_id, rects in objects.items():
        for x1, y1, x2, y2 in rects:
            img[y1:y2, x1:x2] = object_id
    return img


def _ub_fixture(root: Path) -> Path:
    test = "abnormal_scene_3_scenario_1"
    masks = {
        test: {
            # object 3 is abnormal on frames 4..6; object 7 is a normal passer-by in the same masks
            4: _ub_mask({3: [(10, 20, 30, 50)], 7: [(60, 5, 70, 15)]}),
            5: _ub_mask({3: [(12, 20, 32, 50), (100, 60, 102, 62)], 7: [(61, 5, 71, 15)]}),  # largest blob wins
            6: _ub_mask({7: [(62, 5, 72, 15)]}),  # object 3 hidden: no box
            7: _ub_mask({3: [(14, 20, 34, 50)]}),  # past its track: not read
        },
        "abnormal_scene_1_scenario_1": {0: _ub_mask({1: [(0, 0, 5, 5)]})},  # training: masks not read
    }
    tracks = {
        test: "3,4,6\n",
        "abnormal_scene_3_scenario_2_fog": "1,0,2\n",  # no masks at all: no boxes, no warning
        "abnormal_scene_1_scenario_1": "1,0,0\n",
        "abnormal_scene_2_scenario_1": "1,3,5\n",
    }
    return ubnormal_tree(root, masks, tracks)


def test_ubnormal_boxes_from_the_object_masks(tmp_path, capsys):
    root = _ub_fixture(tmp_path / "UBnormal")
    assert import_main(["ubnormal", str(root)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train 2 videos (1 anomalous); test 3 videos (2 anomalous), 1 with boxes" in err[0]
    v = _by_name(load(root / "annotations.json"))
    assert v["abnormal_scene_3_scenario_1"].path == "Scene3/abnormal_scene_3_scenario_1.mp4"
    assert v["abnormal_scene_3_scenario_1"].anomalies == [(4, 7)]
    assert v["abnormal_scene_3_scenario_1"].boxes == {4: [[10.0, 20.0, 30.0, 50.0]], 5: [[12.0, 20.0, 32.0, 50.0]]}
    assert not v["abnormal_scene_1_scenario_1"].boxes and not v["abnormal_scene_3_scenario_2_fog"].boxes
    assert v["abnormal_scene_3_scenario_2_fog"].anomalies == [(0, 3)]


def test_ubnormal_real_list_names_are_required(tmp_path):
    root = _ub_fixture(tmp_path / "UBnormal")
    (root / "scripts/normal_training_video_names.txt").unlink()
    with pytest.raises(UserError, match="cannot find normal_training_video_names.txt or normal_train_video_names.txt"):
        import_ubnormal(root)
    ann = import_ubnormal(_ub_fixture(tmp_path / "ub2"), include_validation=True)
    assert [Path(x.path).stem for x in ann.split("train")] == [
        "abnormal_scene_1_scenario_1",
        "normal_scene_1_scenario_2",
        "abnormal_scene_2_scenario_1",
        "normal_scene_2_scenario_2",
    ]


def test_ubnormal_missing_some_masks_is_one_warning(tmp_path, capsys):
    root = _ub_fixture(tmp_path / "UBnormal")
    (root / "Scene3/abnormal_scene_3_scenario_1_annotations/abnormal_scene_3_scenario_1_0005_gt.png").unlink()
    v = _by_name(import_ubnormal(root))
    assert v["abnormal_scene_3_scenario_1"].boxes == {4: [[10.0, 20.0, 30.0, 50.0]]}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "abnormal_scene_3_scenario_1 (1 of 3)" in err


def test_ubnormal_unreadable_mask_is_an_error(tmp_path):
    root = _ub_fixture(tmp_path / "UBnormal")
    write(root / "Scene3/abnormal_scene_3_scenario_1_annotations/abnormal_scene_3_scenario_1_0004_gt.png", "not png")
    with pytest.raises(UserError, match="abnormal_scene_3_scenario_1_0004_gt.png"):
        import_ubnormal(root)


# ----------------------------------------------------------------------------- the recipe: import -> eval


@pytest.fixture(scope="module")
def ucf_recipe(tmp_path_factory):
    """The README's real-data path on a UCF-Crime tree of generated videos: import with Liu & Ma boxes, extract,
    train; returns (features, checkpoint)."""
    from conftest import write_video

    from stprompt import extract, train

    base = tmp_path_factory.mktemp("recipe")
    clips = base / "clips"
    clips.mkdir()
    specs = {  # stem: (frames, anomalous frames)
        "Abuse001_x264": (48, (8, 40)),
        "Normal_Videos001_x264": (48, None),
        "Abuse028_x264": (48, (16, 40)),
        "Normal_Videos_003_x264": (40, None),
    }
    videos = {}
    for i, (stem, (n, blob)) in enumerate(specs.items()):
        videos[stem] = clips / f"{stem}.mp4"
        write_video(videos[stem], n, seed=i, blob=blob)
    root = ucf_tree(base / "UCF-Crime", temporal={"Abuse028_x264": "Abuse  16  39  -1  -1"}, videos=videos)
    pkl = write_liu_ma(base / "Test_annotation.pkl", {"Abuse028_x264": [(f, 20, 30, 80, 90) for f in (20, 28, 36)]})
    assert import_main(["ucf-crime", str(root), "--boxes", str(pkl)]) == 0
    feats = base / "feats"
    assert extract.main([str(root), "--out", str(feats), "--stride", "8", "--scale-b", "--quiet"]) == 0
    ckpt = base / "model.pt"
    assert train.main([str(feats), "--out", str(ckpt), "--epochs", "1", "--batch", "2", "--quiet"]) == 0
    return feats, ckpt


def _eval(features: Path, ckpt: Path, capsys) -> tuple[dict, list[str]]:
    from stprompt import evaluate

    capsys.readouterr()
    argv = [str(features), "--ckpt", str(ckpt), "--localize", "--alarm-threshold", "0", "--tiou-theta", "0"]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err.strip().splitlines()


def test_recipe_with_boxes_reports_tiou(ucf_recipe, capsys):
    result, err = _eval(*ucf_recipe, capsys)
    assert result["tiou_gt_boxes"] == 3 and 0.0 <= result["tiou"] <= 1.0 and result["tiou_reason"] is None
    assert not [line for line in err if "TIoU" in line]


def test_eval_without_boxes_says_why_tiou_is_null(ucf_recipe, tmp_path, capsys):
    features, ckpt = ucf_recipe
    bare = tmp_path / "feats"
    shutil.copytree(features, bare)
    index = json.loads((bare / "index.json").read_text())
    for entry in index["videos"].values():
        entry["video"]["boxes"] = {}  # as imported without --boxes
    (bare / "index.json").write_text(json.dumps(index))
    result, err = _eval(bare, ckpt, capsys)
    assert result["tiou"] is None and result["tiou_gt_boxes"] == 0
    assert "none of the 2 test videos has ground-truth boxes" in result["tiou_reason"]
    assert err == [f"stp-eval: warning: no TIoU: {result['tiou_reason']}"]


def test_eval_boxes_past_the_scored_frames_say_so(ucf_recipe, tmp_path, capsys):
    features, ckpt = ucf_recipe
    late = tmp_path / "feats"
    shutil.copytree(features, late)
    index = json.loads((late / "index.json").read_text())
    for entry in index["videos"].values():
        if entry["video"]["boxes"]:
            entry["video"]["boxes"] = {"100": [[20.0, 30.0, 80.0, 90.0]]}  # past the 48 frames scored
    (late / "index.json").write_text(json.dumps(index))
    result, err = _eval(late, ckpt, capsys)
    assert result["tiou"] is None and "past their last scored snippet" in result["tiou_reason"]
    assert len(err) == 1 and "no TIoU" in err[0]

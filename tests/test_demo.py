"""stp-demo into a folder that already holds a run (issue 18 item 3): a part made with the same settings is reused,
one made with others is made again and the demo says so, one it has no record of is refused. The whole chain runs
in test_e2e.py."""

import json

import pytest

from stprompt import demo
from stprompt.errors import UserError

DATASET = {"train": 16, "test": 8, "frames": 192, "seed": 0}


def made(out, part="data", settings=DATASET, key="dataset"):
    (out / part).mkdir(parents=True)
    (out / part / "annotations.json").write_text("{}")
    ledger = {key: settings}
    (out / demo.LEDGER).write_text(json.dumps(ledger))
    return demo.read_ledger(out)


def test_same_settings_reuse_the_part(tmp_path, capsys):
    ledger = made(tmp_path)
    assert demo.reuse_part(tmp_path, ledger, "dataset", tmp_path / "data", dict(DATASET)) is True
    assert (tmp_path / "data/annotations.json").is_file()
    assert "reusing" in capsys.readouterr().err


def test_other_settings_make_the_part_again_and_say_which(tmp_path, capsys):
    ledger = made(tmp_path)
    assert demo.reuse_part(tmp_path, ledger, "dataset", tmp_path / "data", {**DATASET, "train": 8}) is False
    assert not (tmp_path / "data").exists() and "dataset" not in demo.read_ledger(tmp_path)
    err = capsys.readouterr().err
    assert "making" in err and "again for train 8" in err and "made with train 16" in err


def test_a_part_made_from_a_changed_one_is_made_again(tmp_path, capsys):
    ledger = made(tmp_path, "features", {"clip": "stp-tiny", "stride": 8}, "features")
    wanted = {"clip": "stp-tiny", "stride": 8}
    assert demo.reuse_part(tmp_path, ledger, "features", tmp_path / "features", wanted, stale=True) is False
    assert "its dataset changed" in capsys.readouterr().err


def test_an_interrupted_part_is_made_again(tmp_path, capsys):
    ledger = made(tmp_path, settings={**DATASET, "finished": False})
    assert demo.reuse_part(tmp_path, ledger, "dataset", tmp_path / "data", dict(DATASET)) is False
    assert "stopped before it was complete" in capsys.readouterr().err


def test_a_part_without_a_record_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="no record of it"):
        demo.reuse_part(tmp_path, {}, "dataset", tmp_path / "data", dict(DATASET))
    assert (tmp_path / "data").is_dir()  # not the demo's to remove


def test_a_folder_from_an_older_demo_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/annotations.json").write_text("{}")
    assert demo.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stp-demo: error: ") and "choose another --out" in err[0]

"""The CLIP activation follows the weights (issue 15): OpenAI's QuickGELU weights never run under GELU.

Offline: random weights of stp-tiny's shape are saved to tmp and loaded through every path (state dict, an
open_clip_config.json beside it, a TorchScript archive as OpenAI distributed its weights, a hub tag with open_clip's
download patched to return the saved file), asserting the activation module in the MLPs of the model built.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_checkpoint

from stprompt.checkpoint import load_checkpoint
from stprompt.clip import loader
from stprompt.clip.loader import (
    GELU,
    QUICK_GELU,
    check_same_activation,
    legacy_activation,
    load_clip,
    resolve_clip,
)
from stprompt.data.features import FeatureStore
from stprompt.errors import UserError

GELU_ARCH = "stp-act"  # stp-tiny's shape with open_clip's default activation (GELU), like ViT-B-16
QUICK_ARCH = "stp-act-quickgelu"  # its QuickGELU twin, like ViT-B-16-quickgelu
SOLO_ARCH = "stp-solo"  # a GELU architecture without a -quickgelu twin
HALF = [0.5, 0.5, 0.5]


def mlp_activations(model: torch.nn.Module) -> set[type]:
    """The activation classes in the transformer MLPs (vision and text) of an open_clip model."""
    found = {type(m) for name, m in model.named_modules() if name.endswith("mlp.gelu")}
    assert found, "no transformer MLP found"
    return found


def quick_gelu_class() -> type:
    from open_clip.transformer import QuickGELU

    return QuickGELU


def assert_runs(clip, activation: str) -> None:
    expected = quick_gelu_class() if activation == QUICK_GELU else torch.nn.GELU
    assert mlp_activations(clip.model) == {expected}
    assert clip.activation == activation


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture
def archs(monkeypatch):
    """GELU / QuickGELU / twin-less test architectures and a patched hub registry: `openai` (QuickGELU) and
    `laion` (GELU) tags whose download returns whatever `downloads["file"]` names and records the call."""
    from open_clip import factory, pretrained

    loader.register_configs()  # first: registering rescans (replaces) open_clip's config table
    base = {k: v for k, v in factory.get_model_config("stp-tiny").items() if k != "quick_gelu"}
    monkeypatch.setitem(factory._MODEL_CONFIGS, GELU_ARCH, base)
    monkeypatch.setitem(factory._MODEL_CONFIGS, QUICK_ARCH, {**base, "quick_gelu": True})
    monkeypatch.setitem(factory._MODEL_CONFIGS, SOLO_ARCH, base)
    tag = {"url": "https://example.invalid/w.pt", "hf_hub": "", "mean": HALF, "std": HALF}
    quick = {**tag, "quick_gelu": True}
    monkeypatch.setitem(pretrained._PRETRAINED, GELU_ARCH, {"openai": quick, "laion": tag})
    monkeypatch.setitem(pretrained._PRETRAINED, QUICK_ARCH, {"openai": quick})
    monkeypatch.setitem(pretrained._PRETRAINED, SOLO_ARCH, {"openai": quick})
    downloads: dict = {"calls": []}

    def download(cfg, **_kw):
        downloads["calls"].append(cfg)
        return str(downloads["file"])

    monkeypatch.setattr(pretrained, "download_pretrained", download)
    return {"base": base, "downloads": downloads}


@pytest.fixture
def weights(archs, tmp_path):
    """Random weights as a torch.save'd state dict, plus TorchScript archives of them running QuickGELU and GELU."""
    import open_clip

    clip = load_clip(f"{GELU_ARCH}:random:3")
    state = {k: v.contiguous() for k, v in clip.model.state_dict().items()}
    files = {"state": tmp_path / "state" / "weights.pt", "sha256": clip.sha256, "model": clip.model}
    files["state"].parent.mkdir()
    torch.save(state, files["state"])
    for name, arch in (("ts_quick", QUICK_ARCH), ("ts_gelu", GELU_ARCH)):
        model = open_clip.create_model(arch)
        model.load_state_dict(state)
        files[name] = tmp_path / f"{name}.pt"
        torch.jit.save(torch.jit.script(model.eval()), str(files[name]))
    return files


def with_config(tmp_path, weights, model_cfg: dict, **extra) -> str:
    """The state dict in a folder of its own with `open_clip_config.json` beside it; the file's path."""
    folder = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*')))}"
    folder.mkdir()
    path = folder / "open_clip_pytorch_model.bin"
    path.write_bytes(weights["state"].read_bytes())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, **extra}))
    return str(path)


# -- open_clip's real registry: resolution only (no build, no download) ---------------------------------------


@pytest.mark.parametrize(
    "spec, arch, activation, forced",
    [
        ("ViT-B-16:openai", "ViT-B-16-quickgelu", QUICK_GELU, True),  # the README's command
        ("ViT-B-16-quickgelu:openai", "ViT-B-16-quickgelu", QUICK_GELU, False),
        ("ViT-L-14:openai", "ViT-L-14-quickgelu", QUICK_GELU, True),
        ("ViT-B-16:metaclip_400m", "ViT-B-16-quickgelu", QUICK_GELU, True),  # any tag open_clip marks quick_gelu
        ("ViT-B-16:laion2b_s34b_b88k", "ViT-B-16", GELU, False),
        ("ViT-B-16:random", "ViT-B-16", GELU, False),
        ("ViT-B-16-quickgelu:random:2", "ViT-B-16-quickgelu", QUICK_GELU, False),
        ("stp-tiny", "stp-tiny", QUICK_GELU, False),
    ],
)
def test_real_registry_resolution(spec, arch, activation, forced):
    build = resolve_clip(spec)
    assert (build.arch, build.activation, build.force_quick_gelu) == (arch, activation, forced)


def test_real_registry_mismatch_and_unknown_tag_are_one_line():
    with pytest.raises(UserError) as err:
        resolve_clip("ViT-B-16-quickgelu:laion2b_s34b_b88k")
    text = one_line_error(err)
    assert "trained with GELU" in text and "use ViT-B-16:laion2b_s34b_b88k" in text
    with pytest.raises(UserError) as err:
        resolve_clip("ViT-B-16:no_such_tag")
    assert "no pretrained weights 'no_such_tag'" in one_line_error(err) and "openai" in str(err.value)


# -- every loading path, built and inspected -------------------------------------------------------------------


def test_random_weights_follow_the_architecture(archs):
    assert_runs(load_clip(f"{GELU_ARCH}:random"), GELU)
    assert_runs(load_clip(f"{QUICK_ARCH}:random"), QUICK_GELU)
    tiny = load_clip("stp-tiny")
    assert_runs(tiny, QUICK_GELU)
    assert tiny.arch == "stp-tiny"


def test_state_dict_alone_follows_the_spec(weights):
    plain = load_clip(f"{GELU_ARCH}:{weights['state']}")  # a state dict says nothing: the architecture decides
    assert_runs(plain, GELU)
    quick = load_clip(f"{QUICK_ARCH}:{weights['state']}")
    assert_runs(quick, QUICK_GELU)
    assert plain.sha256 == quick.sha256 == weights["sha256"]  # the sha256 fingerprints the weights alone
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # same weights, other activation: other embeddings (why it must be recorded)
        assert not torch.allclose(plain.model.encode_image(image), quick.model.encode_image(image), atol=1e-4)


def test_config_beside_the_file_decides(weights, archs, tmp_path):
    base = archs["base"]
    path = with_config(tmp_path, weights, {**base, "quick_gelu": True}, preprocess_cfg={"mean": HALF, "std": HALF})
    clip = load_clip(f"{GELU_ARCH}:{path}")
    assert_runs(clip, QUICK_GELU)
    assert clip.arch == QUICK_ARCH and clip.sha256 == weights["sha256"]
    assert list(clip.preprocess.mean) == HALF  # its preprocess_cfg is honoured too
    solo = load_clip(f"{SOLO_ARCH}:{path}")  # no -quickgelu twin: built with force_quick_gelu under its own name
    assert_runs(solo, QUICK_GELU)
    assert solo.arch == SOLO_ARCH
    assert_runs(load_clip(f"{GELU_ARCH}:{with_config(tmp_path, weights, base)}"), GELU)  # absent: GELU


def test_config_beside_the_file_refusals(weights, archs, tmp_path):
    base = archs["base"]
    gelu_path = with_config(tmp_path, weights, base)
    with pytest.raises(UserError) as err:
        load_clip(f"{QUICK_ARCH}:{gelu_path}")
    text = one_line_error(err)
    assert "open_clip_config.json says these weights were trained with GELU" in text and f"use {GELU_ARCH}:" in text
    wider = with_config(tmp_path, weights, {**base, "text_cfg": {**base["text_cfg"], "width": 128}})
    with pytest.raises(UserError) as err:
        load_clip(f"{GELU_ARCH}:{wider}")
    assert "describes another architecture than stp-act (text_cfg.width 128 there, 64" in one_line_error(err)
    broken = with_config(tmp_path, weights, base)
    (tmp_path / broken).with_name("open_clip_config.json").write_text("{not json")
    with pytest.raises(UserError) as err:
        load_clip(f"{GELU_ARCH}:{broken}")
    assert "not a readable open_clip config" in one_line_error(err)


def test_torchscript_archive_brings_its_own_activation(weights):
    # OpenAI's ViT-B-16.pt is a TorchScript archive defining QuickGELU; loaded into the GELU architecture by name
    clip = load_clip(f"{GELU_ARCH}:{weights['ts_quick']}")
    assert_runs(clip, QUICK_GELU)
    assert clip.arch == QUICK_ARCH and clip.sha256 == weights["sha256"]
    assert_runs(load_clip(f"{GELU_ARCH}:{weights['ts_gelu']}"), GELU)
    with pytest.raises(UserError) as err:
        load_clip(f"{QUICK_ARCH}:{weights['ts_gelu']}")
    assert "the TorchScript code in ts_gelu.pt says these weights were trained with GELU" in one_line_error(err)
    assert loader.torchscript_activation(weights["state"]) == (False, None)  # torch.save zips are no archives


def test_hub_tags_decide_without_downloading(weights, archs):
    downloads = archs["downloads"]
    downloads["file"] = weights["state"]
    openai = load_clip(f"{GELU_ARCH}:openai")
    assert_runs(openai, QUICK_GELU)
    assert openai.arch == QUICK_ARCH and openai.sha256 == weights["sha256"]
    assert list(openai.preprocess.mean) == HALF  # the tag's mean / std, as before
    assert_runs(load_clip(f"{GELU_ARCH}:laion"), GELU)
    assert_runs(load_clip(f"{QUICK_ARCH}:openai"), QUICK_GELU)
    assert len(downloads["calls"]) == 3
    with pytest.raises(UserError) as err:
        load_clip(f"{QUICK_ARCH}:laion")
    assert "open_clip's pretrained tag 'laion' says these weights were trained with GELU" in one_line_error(err)
    assert len(downloads["calls"]) == 3  # refused before anything is fetched
    downloads["file"] = weights["ts_quick"]  # open_clip without huggingface_hub fetches OpenAI's TorchScript file
    assert_runs(load_clip(f"{GELU_ARCH}:openai"), QUICK_GELU)


# -- recorded in features, checkpoints and the manifest; mixing refused --------------------------------------------


def test_extract_records_the_activation(tiny_dataset, tmp_path):
    from stprompt import extract

    out = tmp_path / "features"
    assert extract.main([str(tiny_dataset), "--out", str(out), "--split", "test", "--quiet"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert (index["clip_arch"], index["clip_activation"]) == ("stp-tiny", QUICK_GELU)
    assert FeatureStore.open(out).clip_activation == QUICK_GELU


def _store(root, clip: str, **kw) -> FeatureStore:
    return FeatureStore.create(root, clip=clip, clip_sha256="ab" * 32, dim=4, stride=16, scale_b=False,
                               classes=["normal", "X"], fps=25.0, **kw)  # fmt: skip


def test_feature_store_resume_refuses_another_activation(tmp_path):
    store = _store(tmp_path / "a", "ViT-B-16:openai", clip_arch="ViT-B-16-quickgelu", clip_activation=QUICK_GELU)
    assert store.clip_activation == QUICK_GELU
    with pytest.raises(UserError) as err:
        _store(tmp_path / "a", "ViT-B-16:openai", clip_activation=GELU)
    assert "made with CLIP running QuickGELU, not GELU; use another --out folder" in one_line_error(err)
    assert _store(tmp_path / "a", "ViT-B-16:openai", clip_activation=QUICK_GELU).clip_activation == QUICK_GELU


def test_legacy_feature_stores_load_and_keep_apart(tmp_path):
    old = _store(tmp_path / "old", "ViT-B-16:openai")  # written without the fields, as stprompt before issue 15 did
    assert "clip_activation" not in old.index and FeatureStore.open(tmp_path / "old").clip_activation is None
    with pytest.raises(UserError) as err:  # possibly GELU-made: not resumed with QuickGELU features
        _store(tmp_path / "old", "ViT-B-16:openai", clip_activation=QUICK_GELU)
    assert "made with CLIP running an unrecorded activation" in one_line_error(err)
    _store(tmp_path / "laion", "ViT-B-16:laion2b_s34b_b88k")
    resumed = _store(tmp_path / "laion", "ViT-B-16:laion2b_s34b_b88k", clip_activation=GELU)  # known: GELU
    assert resumed.index["clip_activation"] == GELU
    assert _store(tmp_path / "tiny", "stp-tiny").clip_activation == QUICK_GELU


def test_legacy_activation_rule():
    assert legacy_activation("ViT-B-16:openai") is None  # open_clip 2 built QuickGELU for it, 3 GELU
    assert legacy_activation("ViT-B-16:openai", "3.3.0") == GELU
    assert legacy_activation("ViT-B-16:openai", "2.24.0") == QUICK_GELU
    assert legacy_activation("ViT-B-16-quickgelu:openai") == QUICK_GELU
    assert legacy_activation("ViT-B-16:/w/ViT-B-16.pt") == GELU  # the architecture's config, whatever the file
    assert legacy_activation("synthetic-features") is None


def test_checkpoint_records_the_activation(tiny_clip, tmp_path):
    path = make_checkpoint(tiny_clip, tmp_path / "model.pt")
    ckpt = load_checkpoint(path)
    assert ckpt.clip_activation == QUICK_GELU  # not recorded by the helper: inferred from stp-tiny's config
    ckpt.clip, ckpt.clip_arch, ckpt.clip_activation = "ViT-B-16:openai", "ViT-B-16-quickgelu", QUICK_GELU
    ckpt.save(path)
    raw = torch.load(path, weights_only=True)
    assert (raw["clip_arch"], raw["clip_activation"]) == ("ViT-B-16-quickgelu", QUICK_GELU)
    again = load_checkpoint(path)
    assert (again.clip_arch, again.clip_activation) == ("ViT-B-16-quickgelu", QUICK_GELU)
    for key in ("clip_arch", "clip_activation"):  # a checkpoint from before they were recorded
        raw.pop(key)
    torch.save(raw, path)
    legacy = load_checkpoint(path)
    assert legacy.clip_arch is None and legacy.clip_activation is None
    with pytest.raises(UserError) as err:
        check_same_activation(legacy.clip_activation, QUICK_GELU, "the checkpoint", "features in f/")
    assert "made with CLIP running an unrecorded activation" in one_line_error(err)
    check_same_activation(None, None, "the checkpoint", "features in f/")  # legacy with legacy: as before


def test_check_same_activation_refuses_mixing():
    check_same_activation(QUICK_GELU, QUICK_GELU, "the checkpoint", "ViT-B-16:openai")
    with pytest.raises(UserError) as err:
        check_same_activation(GELU, QUICK_GELU, "features in feats/", "ViT-B-16:openai")
    assert one_line_error(err).startswith("features in feats/ was made with CLIP running GELU, but ViT-B-16:openai "
                                          "runs QuickGELU")  # fmt: skip


def test_manifest_records_the_encoders_activation(tiny_bundle, tiny_clip):
    raw = json.loads(tiny_bundle.read_text())
    assert (
        (raw["clip_arch"], raw["clip_activation"]) == (tiny_clip.arch, tiny_clip.activation) == ("stp-tiny", QUICK_GELU)
    )

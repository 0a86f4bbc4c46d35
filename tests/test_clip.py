import numpy as np
import pytest
import torch

from stprompt.clip.image import ImageEncoder
from stprompt.clip.loader import load_clip, state_sha256
from stprompt.clip.spec import ClipSpec
from stprompt.clip.text import encode_texts
from stprompt.errors import UserError
from stprompt.model.prompts import PromptLearner


def test_clipspec_forms():
    assert ClipSpec.parse("stp-tiny") == ClipSpec("stp-tiny", "random", "0")
    assert ClipSpec.parse("ViT-B-16:openai") == ClipSpec("ViT-B-16", "hub", "openai")
    assert ClipSpec.parse("ViT-B-16:/w/clip.safetensors") == ClipSpec("ViT-B-16", "file", "/w/clip.safetensors")
    assert ClipSpec.parse("ViT-B-16:weights.bin").source == "file"
    assert ClipSpec.parse("ViT-B-16:random:7") == ClipSpec("ViT-B-16", "random", "7")
    assert str(ClipSpec.parse("ViT-B-16:random")) == "ViT-B-16:random:0"
    for bad in ["", "ViT-B-16", "ViT-B-16:random:x"]:
        with pytest.raises(UserError):
            ClipSpec.parse(bad)


def test_tiny_config_is_small_and_seeded(tiny_clip):
    visual = tiny_clip.model.visual
    assert 64 <= visual.transformer.width <= 128 and len(visual.transformer.resblocks) == 2
    again = load_clip("stp-tiny:random:0")
    assert again.sha256 == tiny_clip.sha256
    assert load_clip("stp-tiny:random:1").sha256 != tiny_clip.sha256


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_weight_file_loads_the_same_state(tmp_path, tiny_clip, suffix):
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = load_clip(f"stp-tiny:{path}")
    assert loaded.sha256 == tiny_clip.sha256 == state_sha256(loaded.model)


def test_bad_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_clip(f"stp-tiny:{tmp_path / 'missing.pt'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load"):
        load_clip(f"stp-tiny:{junk}")
    with pytest.raises(UserError, match="unknown CLIP architecture"):
        load_clip("ViT-Nope:random")


def test_batched_encoding_equals_one_crop_at_a_time(tiny_clip):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((12, 3, 224, 224)).astype(np.float32)
    batched = ImageEncoder(tiny_clip.model, batch=12)(images)
    single = ImageEncoder(tiny_clip.model, batch=1)(images)
    assert batched.shape == (12, tiny_clip.dim)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    reference = tiny_clip.model.encode_image(torch.from_numpy(images[:3])).detach().numpy()
    np.testing.assert_allclose(batched[:3], reference, rtol=1e-4, atol=1e-5)


def test_bf16_encoding_stays_close(tiny_clip):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    fp32 = ImageEncoder(tiny_clip.model)(images)
    bf16 = ImageEncoder(tiny_clip.model, precision="bf16")(images)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert bf16.dtype == np.float32 and cos.min() > 0.99


def test_prompt_learner_with_zero_context_change_matches_plain_text_path(tiny_clip):
    learner = PromptLearner(tiny_clip.model, ["normal", "road accidents"], n_ctx=8)
    with torch.no_grad():
        learner.ctx.copy_(tiny_clip.model.token_embedding(torch.tensor([343])).expand(8, -1))  # token "x"
        prompts = learner()
    plain = encode_texts(tiny_clip.model, ["x x x x x x x x normal.", "x x x x x x x x road accidents."])
    torch.testing.assert_close(prompts, plain, rtol=1e-5, atol=1e-5)


def test_prompt_gradients_reach_only_the_context(tiny_clip):
    learner = PromptLearner(tiny_clip.model, ["normal", "fighting"])
    learner().sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    assert set(learner.state_dict()) == {"ctx"}

"""Vision extraction against the reference's own feature path (torchvision FX nodes
``blocks.{i}.add_1``, the CLS token of each block output) and plain pooling."""

from __future__ import annotations

import pytest
from PIL import Image
import torch

from featx.catalog import get_spec, load_modelset
from featx.errors import UsageError
from featx.extract.loading import load_vision
from featx.extract.vision import VisionExtractor

VISION_SMOKE = [s.id for s in load_modelset("smoke").select("vision")]


def reference_block_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = [f"blocks.{i}.add_1" for i in range(len(model.blocks))]
    with torch.no_grad():
        out = create_feature_extractor(model, return_nodes=nodes)(x)
    return [out[n] for n in nodes]


@pytest.mark.parametrize("model_id", VISION_SMOKE)
@pytest.mark.parametrize("pool", ["cls", "avg", "max"])
def test_vision_features_equal_reference_block_outputs(sample_rows, model_id, pool):
    loaded = load_vision(get_spec(model_id), "random", "cpu")
    n = 6
    result = VisionExtractor(loaded, pool, model_id).extract(sample_rows.images, batch_size=4, num_workers=0)
    feats = result.feats
    assert result.info["block_pooling"] == "hooks" and result.info["self_check"] == []
    x = torch.stack([loaded.transform(sample_rows.images[i]) for i in range(n)])
    blocks = reference_block_outputs(loaded.model, x)
    prefix = loaded.model.num_prefix_tokens
    ops = {"cls": lambda t: t[:, 0], "avg": lambda t: t[:, prefix:].mean(1), "max": lambda t: t[:, prefix:].max(1).values}
    expected = torch.stack([ops[pool](t) for t in blocks], 1)
    assert feats.shape == (len(sample_rows), len(blocks), loaded.model.embed_dim)
    torch.testing.assert_close(feats[:n], expected, rtol=1e-4, atol=1e-5)


def test_transform_follows_the_pretrained_config():
    dinov2 = load_vision(get_spec("featx-smoke/dinov2"), "random", "cpu")
    clip = load_vision(get_spec("featx-smoke/clip"), "random", "cpu")
    sizes = {t.size for t in dinov2.transform.transforms if hasattr(t, "size") and isinstance(t.size, (int, tuple, list))}
    assert any(518 in (s if isinstance(s, (tuple, list)) else (s,)) for s in sizes)
    norm = [t for t in clip.transform.transforms if type(t).__name__ == "Normalize"][0]
    assert norm.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073), rel=1e-5)  # CLIP statistics


def test_hooks_that_disagree_fall_back_to_forward_intermediates(sample_rows, monkeypatch):
    loaded = load_vision(get_spec("featx-smoke/vit"), "random", "cpu")
    good = VisionExtractor(loaded, "avg", "v").extract(sample_rows.images, 4, num_workers=0).feats
    real = VisionExtractor._hooked
    monkeypatch.setattr(VisionExtractor, "_hooked", lambda self, x: real(self, x) + 1.0)
    result = VisionExtractor(loaded, "avg", "v").extract(sample_rows.images, 4, num_workers=0)
    assert result.info["block_pooling"] == "forward_intermediates" and "differ" in result.info["self_check"][0]
    torch.testing.assert_close(result.feats, good)


def test_parallel_workers_give_the_same_features(sample_rows):
    loaded = load_vision(get_spec("featx-smoke/vit"), "random", "cpu")
    a = VisionExtractor(loaded, "cls", "v").extract(sample_rows.images, 8, num_workers=0).feats
    b = VisionExtractor(loaded, "cls", "v").extract(sample_rows.images, 8, num_workers=2).feats
    torch.testing.assert_close(a, b)


def test_cls_refused_up_front_for_a_model_without_class_token():
    from featx.catalog.spec import ModelSpec

    spec = ModelSpec(id="vit_small_patch16_224.augreg_in21k", modality="vision", family="vit", init="random",
                     config={"depth": 1, "embed_dim": 48, "num_heads": 3, "class_token": False, "global_pool": "avg"})
    loaded = load_vision(spec, "random", "cpu")
    with pytest.raises(UsageError, match="--pool avg"):
        VisionExtractor(loaded, "cls", spec.id)


def test_images_per_batch_follow_the_token_budget_unless_given():
    from featx.extract.runner import CPU_TOKEN_BUDGET, ExtractOptions, vision_batch_size
    from featx.extract.vision import image_tokens

    loaded = load_vision(get_spec("featx-smoke/dinov2"), "random", "cpu")
    x = loaded.transform(Image.new("RGB", (64, 48)))[None]
    with torch.no_grad():
        tokens = loaded.model.forward_features(x).shape[1]  # what a block sees, counted by the model
    assert image_tokens(loaded.model) == tokens
    assert vision_batch_size(loaded, ExtractOptions()) == max(1, CPU_TOKEN_BUDGET // tokens)
    assert vision_batch_size(loaded, ExtractOptions(token_budget=10 * tokens)) == 10
    assert vision_batch_size(loaded, ExtractOptions(batch_size=3)) == 3

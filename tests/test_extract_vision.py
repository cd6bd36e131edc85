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
TOKEN_SMOKE = [s.id for s in load_modelset("smoke").select("vision") if s.image_tokens is None]
MAP_SMOKE = [s.id for s in load_modelset("smoke").select("vision") if s.image_tokens is not None]


def reference_block_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = [f"blocks.{i}.add_1" for i in range(len(model.blocks))]
    with torch.no_grad():
        out = create_feature_extractor(model, return_nodes=nodes)(x)
    return [out[n] for n in nodes]


@pytest.mark.parametrize(("model_id", "pool"), [(m, p) for m in TOKEN_SMOKE for p in ("cls", "avg", "max")
                                                 if p != "cls" or get_spec(m).class_token])
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


def hooked_stage_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The modules timm's ``feature_info`` names, hooked while ``forward_features`` runs (not
    ``forward_intermediates``), as [B, C, H, W] (Swin's stages give NHWC)."""
    outs: list[torch.Tensor] = []
    handles = [model.get_submodule(f["module"]).register_forward_hook(lambda _m, _a, out: outs.append(out.clone()))
               for f in model.feature_info]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return [o if o.shape[1] == f["num_chs"] else o.permute(0, 3, 1, 2) for o, f in zip(outs, model.feature_info)]


@pytest.mark.parametrize("model_id", MAP_SMOKE)
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_convnet_stages_pool_to_a_list_of_layers_of_their_widths(sample_rows, model_id, pool):
    loaded = load_vision(get_spec(model_id), "random", "cpu")
    result = VisionExtractor(loaded, pool, model_id).extract(sample_rows.images, batch_size=16, num_workers=0)
    widths = [f["num_chs"] for f in loaded.model.feature_info]
    assert isinstance(result.feats, list) and len(set(widths)) > 1
    assert [tuple(t.shape) for t in result.feats] == [(len(sample_rows), c) for c in widths]
    n = 6
    x = torch.stack([loaded.transform(sample_rows.images[i]) for i in range(n)])
    reduce = torch.nn.functional.adaptive_avg_pool2d if pool == "avg" else torch.nn.functional.adaptive_max_pool2d
    for got, stage in zip(result.feats, hooked_stage_outputs(loaded.model, x)):
        torch.testing.assert_close(got[:n], reduce(stage, 1).flatten(1), rtol=1e-4, atol=1e-5)
    assert result.info["block_pooling"] == "stage maps"


def test_convnet_batches_split_on_out_of_memory_give_the_same_rows(sample_rows, monkeypatch):
    loaded = load_vision(get_spec("featx-smoke/convnext"), "random", "cpu")
    whole = VisionExtractor(loaded, "avg", "c").extract(sample_rows.images, 16, num_workers=0).feats
    real = VisionExtractor.features

    def tight(self, x):
        if x.shape[0] > 4:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, x)

    monkeypatch.setattr(VisionExtractor, "features", tight)
    split = VisionExtractor(loaded, "avg", "c").extract(sample_rows.images, 16, num_workers=0).feats
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b)


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


def test_cls_refused_at_load_for_an_uncatalogued_model_without_class_token():
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


@pytest.mark.parametrize("model_id", MAP_SMOKE)
def test_image_tokens_price_the_largest_feature_map(model_id):
    from featx.extract.vision import image_tokens

    spec = get_spec(model_id)
    model = load_vision(spec, "random", "cpu").model
    _, h, w = model.pretrained_cfg["input_size"]
    x = torch.zeros(1, 3, h, w)
    largest = max(t.numel() for t in hooked_stage_outputs(model, x))
    assert image_tokens(model) == -(-largest // model.num_features) == spec.image_tokens
    assert (spec.hidden, spec.layers) == (model.num_features, len(model.feature_info))


def test_feature_maps_of_one_width_are_stacked_like_vit_features(sample_rows):
    from featx.catalog.spec import ModelSpec

    spec = ModelSpec(id="convnext_base.fb_in22k", modality="vision", family="convnext", init="random", class_token=False,
                     config={"depths": [1, 1, 1, 1], "dims": [16, 16, 16, 16]})
    loaded = load_vision(spec, "random", "cpu")
    result = VisionExtractor(loaded, "avg", spec.id).extract(sample_rows.images, 32, num_workers=0)
    assert isinstance(result.feats, torch.Tensor) and result.feats.shape == (len(sample_rows), 4, 16)
    x = loaded.transform(sample_rows.images[0])[None]
    expected = torch.stack([s.mean((2, 3)) for s in hooked_stage_outputs(loaded.model, x)], 1)
    torch.testing.assert_close(result.feats[:1], expected, rtol=1e-4, atol=1e-5)


def test_stage_maps_in_another_layout_are_refused_not_pooled_over_the_wrong_axes(sample_rows):
    from featx.errors import PermanentError

    loaded = load_vision(get_spec("featx-smoke/convnext"), "random", "cpu")
    real = loaded.model.forward_intermediates
    loaded.model.forward_intermediates = lambda x, **kw: [t.permute(0, 2, 3, 1) for t in real(x, **kw)]  # NHWC
    with pytest.raises(PermanentError, match=r"not \[B, C, H, W\] maps of widths \[16, 24, 32, 48\]"):
        VisionExtractor(loaded, "avg", "c").extract(sample_rows.images, 16, num_workers=0)

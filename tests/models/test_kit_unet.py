"""kit_unet: the U-Net whose decoder the config composes (pixel shuffle, residual blocks, self-attention)."""
import pytest
import torch

from strokekit.config import ConfigError, load_config
from strokekit.models.deep_supervision import decoder_stages
from strokekit.models.kit_unet import DecoderBlock, PixelShuffleUp, SelfAttention, TransposeUp
from strokekit.models.registry import build_model


def cfg(*sets):
    return load_config(None, ["task=seg", "model=kit_unet", "encoder=resnet18", "img_size=64", *sets])


def test_pixel_shuffle_starts_as_a_nearest_upsampling():
    """ICNR: the four sub-pixels of each 2x2 output block start equal (no checkerboard), and the map doubles."""
    torch.manual_seed(0)
    up = PixelShuffleUp(8).eval()
    y = up(torch.randn(2, 8, 5, 7))
    assert y.shape == (2, 8, 10, 14)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        assert torch.allclose(y[..., dy::2, dx::2], y[..., 0::2, 0::2], atol=1e-6)
    assert y.std() > 0


def test_self_attention_starts_as_identity_and_reaches_across_the_map():
    torch.manual_seed(0)
    sa = SelfAttention(16)
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    assert torch.equal(sa(x), x)                       # gamma = 0 at first
    with torch.no_grad():
        sa.gamma.fill_(1.0)
    sa(x)[0, :, 0, 0].sum().backward()                 # one corner's output ...
    assert x.grad[0, :, 7, 7].abs().sum() > 0          # ... depends on the opposite corner's input


def test_residual_block_carries_its_input_past_a_dead_body():
    """With the conv body's output zeroed, a residual block still passes [upsampled, skip] through its
    projected shortcut; a plain block gives nothing."""
    torch.manual_seed(0)
    x, skip = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 8, 8)
    outs = {}
    for block in ("plain", "residual"):
        b = DecoderBlock(8, 4, 6, "nearest", block, None, False).eval()
        last_bn = b.body[-1][1]
        with torch.no_grad():
            last_bn.weight.zero_()
            last_bn.bias.zero_()
        outs[block] = b(x, skip)
    assert outs["plain"].abs().max() == 0
    assert outs["residual"].abs().max() > 0 and outs["residual"].shape == (2, 6, 8, 8)


def test_kit_unet_options_shape_the_decoder():
    plain = build_model(cfg()).eval()
    assert not any(isinstance(m, (SelfAttention, PixelShuffleUp)) for m in plain.modules())
    dyn = build_model(cfg("decoder_upsample=pixel_shuffle", "decoder_self_attention=true")).eval()
    attention = [b for b in dyn.decoder.blocks if isinstance(b.self_attention, SelfAttention)]
    assert len(attention) == 1 and sum(isinstance(m, PixelShuffleUp) for m in dyn.modules()) == 5
    seen = {}
    attention[0].register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        out = dyn(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 3, 64, 96) and seen["shape"][-2:] == (8, 12)    # the stride-8 stage, as fastai's
    res = build_model(cfg("decoder_block=residual", "decoder_attention=scse", "drop_rate=0.2"))
    assert all(b.shortcut is not None for b in res.decoder.blocks)
    assert isinstance(res.segmentation_head[0], torch.nn.Dropout2d)


def test_transpose_upsampling_is_a_learned_up_convolution():
    """decoder_upsample: transpose (the VGG16 paper's deconvolution): a 2x2 transposed conv, stride 2, in every
    decoder block; one input cell reaches exactly its own 2x2 output patch, weighted by learned kernels."""
    model = build_model(cfg("decoder_upsample=transpose")).eval()
    ups = [b.up for b in model.decoder.blocks]
    assert all(isinstance(u, TransposeUp) for u in ups) and len(ups) == 5
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    up = TransposeUp(4).eval()
    x = torch.zeros(1, 4, 3, 3)
    x[0, :, 1, 1] = 1.0
    with torch.no_grad():
        changed = (up.conv(x) != 0).any(1)[0]
    assert changed[2:4, 2:4].all() and changed.sum() == 4
    assert not torch.equal(up.conv.weight[:, :, 0, 0], up.conv.weight[:, :, 1, 1])   # not a nearest copy


def test_kit_unet_trains_with_deep_supervision_and_sigmoid_head():
    model = build_model(cfg("deep_supervision=2", "seg_head=sigmoid", "loss=bce", "decoder_block=residual"))
    assert len(decoder_stages(model.net.net)) == 4
    model.train()
    out, aux = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64) and len(aux) == 2
    (out.sum() + sum(a.sum() for a in aux)).backward()


@pytest.mark.parametrize("sets", [["model=Unet", "decoder_block=residual"],
                                  ["model=hypercolumn_unet", "decoder_upsample=pixel_shuffle"],
                                  ["task=stroke", "model=resnet18", "decoder_self_attention=true"]])
def test_decoder_options_of_another_model_are_refused(sets):
    with pytest.raises(ConfigError, match="kit_unet"):
        load_config(None, ["task=seg", *sets])


def test_kit_unet_pretrained_offline_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from strokekit.models.weights import WeightsError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("STROKEKIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsError, match="resnet34"):
        build_model(cfg("encoder=resnet34", "pretrained=true"))

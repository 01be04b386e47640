import pytest
import torch
import torch.nn.functional as F

from nanovlm.data.shapes import VOCAB, build_tensors
from nanovlm.models.image import CNNEncoder, ViTEncoder
from nanovlm.models.text import AttentionTextEncoder, MeanPoolTextEncoder


@pytest.mark.parametrize("dim", [16, 32, 64])
def test_encoders_return_unit_vectors_of_dim(dim: int) -> None:
    images, tokens, _ = build_tensors()
    for encoder, batch in ((CNNEncoder(dim), images[:10]), (MeanPoolTextEncoder(len(VOCAB), dim), tokens[:10])):
        out = encoder(batch)
        assert out.shape == (10, dim)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(10))


def test_cnn_downsamples_32_to_1_in_five_stride_2_convs() -> None:
    encoder = CNNEncoder(24)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 24]
    assert all(c.stride == (2, 2) for c in convs)
    assert encoder.convs(torch.zeros(2, 3, 32, 32)).shape == (2, 24, 1, 1)


def test_mean_pool_ignores_word_order() -> None:
    torch.manual_seed(0)
    encoder = MeanPoolTextEncoder(len(VOCAB), 16)
    tokens = torch.tensor([[0, 1, 10, 13]])
    torch.testing.assert_close(encoder(tokens), encoder(tokens[:, [0, 3, 1, 2]]))


def test_transformer_encoders_return_unit_vectors_of_dim() -> None:
    images, tokens, _ = build_tensors()
    for encoder, batch in ((ViTEncoder(24), images[:5]), (AttentionTextEncoder(len(VOCAB), 24), tokens[:5])):
        out = encoder(batch)
        assert out.shape == (5, 24)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize(("patch_size", "tokens"), [(4, 1 + 64), (8, 1 + 16), (16, 1 + 4)])
def test_vit_has_one_token_per_patch_plus_cls(patch_size: int, tokens: int) -> None:
    encoder = ViTEncoder(16, patch_size=patch_size)
    assert encoder.pos_embed.shape == (1, tokens, 64)
    assert encoder(torch.rand(3, 3, 32, 32)).shape == (3, 16)


def test_vit_output_is_the_cls_token() -> None:
    """Attention carries every patch into [CLS] (changing one patch moves the embedding), and the
    embedding is the projection of position 0 of the final norm's output."""
    torch.manual_seed(0)
    encoder = ViTEncoder(16, patch_size=8, depth=1).eval()
    images = torch.rand(1, 3, 32, 32)
    changed = images.clone()
    changed[..., 24:, 24:] = 0  # only the last patch
    assert not torch.allclose(encoder(images), encoder(changed))
    seen = {}
    encoder.norm.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    out = encoder(images)
    torch.testing.assert_close(out, F.normalize(encoder.out_norm(encoder.proj(seen["x"][:, 0])), dim=-1))


def test_mha_depends_on_word_order_but_mean_pool_does_not() -> None:
    torch.manual_seed(0)
    mha, mean = AttentionTextEncoder(len(VOCAB), 16), MeanPoolTextEncoder(len(VOCAB), 16)
    _, tokens, _ = build_tensors()
    words_permuted = tokens[:, [0, 3, 1, 2]]  # [CLS] stays first, the three words rotate
    torch.testing.assert_close(mean(tokens), mean(words_permuted))
    moved = (mha(tokens) - mha(words_permuted)).norm(dim=-1)
    assert (moved > 1e-3).all(), moved.min()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patch_size": 5}, r"encoder\.patch_size must divide data\.image_size \(32\), got 5"),
    ({"heads": 3}, r"encoder\.heads \(3\) must divide encoder\.width \(64\)"),
    ({"depth": 0}, r"encoder\.width, encoder\.depth, encoder\.heads must be >= 1"),
    ({"dropout": 1.0}, r"encoder\.dropout must be in \[0, 1\)"),
])  # fmt: skip
def test_vit_rejects_bad_sizes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTEncoder(16, **kwargs)


def test_mha_rejects_bad_sizes_and_long_captions() -> None:
    with pytest.raises(ValueError, match=r"text_encoder\.heads \(5\) must divide text_encoder\.width \(64\)"):
        AttentionTextEncoder(len(VOCAB), 16, heads=5)
    with pytest.raises(ValueError, match=r"text_encoder\.mlp_ratio must be > 0"):
        AttentionTextEncoder(len(VOCAB), 16, mlp_ratio=0)
    with pytest.raises(ValueError, match=r"exceed text_encoder\.max_len \(4\)"):
        AttentionTextEncoder(len(VOCAB), 16)(torch.zeros(1, 5, dtype=torch.long))

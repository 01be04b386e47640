import pytest
import torch

from nanovlm.data import VOCAB, build_tensors
from nanovlm.encoders import CNNEncoder, MeanPoolTextEncoder


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

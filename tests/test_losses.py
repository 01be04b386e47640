import math

import pytest
import torch
import torch.nn.functional as F

from nanovlm.losses import ClipLoss


def reference_clip_loss(img: torch.Tensor, txt: torch.Tensor, tau: float) -> torch.Tensor:
    """The CLIP loss written out term by term: -log softmax of each matching pair, both ways."""
    n = len(img)
    total = img.new_zeros(())
    for i in range(n):
        s_row = torch.stack([img[i] @ txt[j] / tau for j in range(n)])  # image i vs every text
        s_col = torch.stack([img[j] @ txt[i] / tau for j in range(n)])  # text i vs every image
        total = total - (s_row[i] - torch.logsumexp(s_row, 0)) - (s_col[i] - torch.logsumexp(s_col, 0))
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_clip_loss_matches_reference_value_and_gradients(tau: float) -> None:
    torch.manual_seed(0)
    img = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1).requires_grad_()
    ours = ClipLoss(tau).double()(img, txt)
    ref = reference_clip_loss(img, txt, tau)
    torch.testing.assert_close(ours, ref)
    grads = torch.autograd.grad(ours, (img, txt))
    ref_grads = torch.autograd.grad(ref, (img, txt))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_clip_loss_is_log_n_when_all_logits_are_equal() -> None:
    emb = F.normalize(torch.ones(5, 4), dim=-1)  # every pair has similarity 1
    assert ClipLoss(0.07)(emb, emb).item() == pytest.approx(math.log(5), rel=1e-5)


def test_clip_loss_is_near_zero_for_perfectly_separated_pairs() -> None:
    emb = torch.eye(6)
    assert ClipLoss(0.01)(emb, emb).item() < 1e-6
    assert ClipLoss(0.01)(emb, emb.roll(1, dims=0)).item() > 50  # every pair mismatched


def test_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"loss\.temperature must be > 0"):
        ClipLoss(0.0)

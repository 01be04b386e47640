import math

import pytest
import torch
import torch.nn.functional as F

from nanovlm.objectives.contrastive import ClipLoss, SigLipLoss, clip_loss, siglip_loss


def reference_clip_loss(img: torch.Tensor, txt: torch.Tensor, tau: float) -> torch.Tensor:
    """The CLIP loss written out term by term: -log softmax of each matching pair, both ways."""
    n = len(img)
    total = img.new_zeros(())
    for i in range(n):
        s_row = torch.stack([img[i] @ txt[j] / tau for j in range(n)])  # image i vs every text
        s_col = torch.stack([img[j] @ txt[i] / tau for j in range(n)])  # text i vs every image
        total = total - (s_row[i] - torch.logsumexp(s_row, 0)) - (s_col[i] - torch.logsumexp(s_col, 0))
    return total / (2 * n)


def assert_same_value_and_gradients(ours: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    """Our loss and a reference agree in value and in the gradient with respect to every input."""
    torch.testing.assert_close(ours, ref)
    grads = torch.autograd.grad(ours, inputs)
    for g, r in zip(grads, torch.autograd.grad(ref, inputs), strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_clip_loss_matches_reference_value_and_gradients(tau: float) -> None:
    torch.manual_seed(0)
    img = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1).requires_grad_()
    assert_same_value_and_gradients(ClipLoss(tau).double()(img, txt), reference_clip_loss(img, txt, tau), (img, txt))


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


def reference_siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: float, bias: float) -> torch.Tensor:
    """The SigLIP loss as the paper writes it: -1/N sum_i sum_j log(1 / (1 + exp(z_ij (-s x_i.y_j - b))))."""
    n = len(img)
    total = img.new_zeros(())
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(1 / (1 + torch.exp(z * (-scale * (img[i] @ txt[j]) - bias))))
    return total / n


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (10.0, -math.log(7)), (3.0, 1.0)])
def test_siglip_loss_matches_reference_value_and_gradients(scale: float, bias: float) -> None:
    torch.manual_seed(0)
    img = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1).requires_grad_()
    ours = SigLipLoss(scale=scale, bias=bias).double()(img, txt)
    assert_same_value_and_gradients(ours, reference_siglip_loss(img, txt, scale, bias), (img, txt))


def test_siglip_gradients_reach_scale_and_bias() -> None:
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    loss = SigLipLoss(scale=10.0, bias=0.0)
    loss(img, txt).backward()
    # 30 negatives vs 6 positives at b = 0: lowering the bias must help, so d loss / d b > 0.
    assert loss.logit_bias.grad is not None and loss.logit_bias.grad.item() > 0
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.item() != 0
    # d loss / d b written out: sum_ij z_ij (sigmoid(z_ij * logit_ij) - 1) / N.
    with torch.no_grad():
        logits = 10.0 * img @ txt.T
        z = 2 * torch.eye(6) - 1
        expected = (z * (torch.sigmoid(z * logits) - 1)).sum() / 6
    torch.testing.assert_close(loss.logit_bias.grad, expected)


def test_siglip_bias_defaults_to_minus_log_batch_size_and_logs_scale_and_bias() -> None:
    loss = SigLipLoss(batch_size=64)
    assert loss.logit_bias.item() == pytest.approx(-math.log(64))
    logged = loss.extra_log()
    assert logged["scale"].item() == pytest.approx(10.0) and logged["bias"].item() == pytest.approx(-math.log(64))
    assert not SigLipLoss(learnable=False).logit_bias.requires_grad


def test_siglip_with_label_offset_picks_the_shifted_positives() -> None:
    """A process holding items 3..5 of a gathered batch of 9 scores them against all 9 texts."""
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(9, 8), dim=-1), F.normalize(torch.randn(9, 8), dim=-1)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-2.0)
    full = siglip_loss(img, txt, scale, bias)
    parts = [siglip_loss(img[k : k + 3], txt, scale, bias, label_offset=k) for k in (0, 3, 6)]
    torch.testing.assert_close(sum(parts) / 3, full)  # each part is normalised by its 3 rows
    clip_parts = [clip_loss(img[k : k + 3], txt[k : k + 3], scale, img, txt, label_offset=k) for k in (0, 3, 6)]
    torch.testing.assert_close(sum(clip_parts) / 3, clip_loss(img, txt, scale))


def test_learnable_temperature_is_a_parameter_that_learns_and_is_clamped() -> None:
    loss = ClipLoss(0.07, learnable_temperature=True)
    assert isinstance(loss.logit_scale, torch.nn.Parameter)
    assert "logit_scale" not in dict(ClipLoss(0.07).named_parameters())  # fixed mode: a buffer
    emb = torch.eye(4)
    loss(emb, emb).backward()
    assert loss.logit_scale.grad.item() < 0  # perfectly separated pairs: a sharper softmax helps
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))  # as if an optimizer overshot
    value = loss(emb, emb.roll(1, dims=0))
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))
    assert loss.extra_log()["temperature"].item() == pytest.approx(0.01)
    # Every pair mismatched by cosine 1 vs 0: loss is the cross-entropy at scale 100, not 1000.
    assert value.item() == pytest.approx(100.0 + math.log(1 + 3 * math.exp(-100.0)), rel=1e-5)
    value.backward()
    assert loss.logit_scale.grad.item() > 0  # and the gradient can pull it back down at once


def test_siglip_scale_is_clamped_too() -> None:
    loss = SigLipLoss(scale=10.0, bias=0.0)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    loss(torch.eye(3), torch.eye(3))
    assert loss.extra_log()["scale"].item() == pytest.approx(100.0)


# --- Hard negatives (NegCLIP): extra texts that are negatives of every image, never queries -------------------------


def reference_negclip_loss(
    img: torch.Tensor, txt: torch.Tensor, neg: torch.Tensor, valid: list[bool], tau: float
) -> torch.Tensor:
    """NegCLIP written out: image i's softmax runs over every caption and every valid extra text; caption i's
    softmax runs over the images only, as in plain CLIP."""
    n = len(img)
    extras = [m for m in range(len(neg)) if valid[m]]
    total = img.new_zeros(())
    for i in range(n):
        s_row = torch.stack([img[i] @ txt[j] / tau for j in range(n)] + [img[i] @ neg[m] / tau for m in extras])
        s_col = torch.stack([img[j] @ txt[i] / tau for j in range(n)])
        total = total - (s_row[i] - torch.logsumexp(s_row, 0)) - (s_col[i] - torch.logsumexp(s_col, 0))
    return total / (2 * n)


def reference_siglip_hn_loss(
    img: torch.Tensor, txt: torch.Tensor, neg: torch.Tensor, valid: list[bool], scale: float, bias: float
) -> torch.Tensor:
    """SigLIP's pair sum plus one more negative pair (image i, extra text m) for every image and valid m, / N."""
    total = reference_siglip_loss(img, txt, scale, bias) * len(img)
    for i in range(len(img)):
        for m in range(len(neg)):
            if valid[m]:
                total = total - torch.log(1 / (1 + torch.exp(-(-scale * (img[i] @ neg[m]) - bias))))
    return total / len(img)


def _hn_inputs(n: int = 5, per_image: int = 3) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(3)
    img = F.normalize(torch.randn(n, 8, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, 8, dtype=torch.float64), dim=-1).requires_grad_()
    neg = F.normalize(torch.randn(n * per_image, 8, dtype=torch.float64), dim=-1).requires_grad_()
    return img, txt, neg


def test_clip_hard_negatives_match_the_negclip_reference_values_and_gradients() -> None:
    img, txt, neg = _hn_inputs()
    valid = [m % 4 != 1 for m in range(len(neg))]  # some negatives do not exist
    ours = ClipLoss(0.1, hard_negatives=True).double()(img, txt, neg, torch.tensor(valid))
    assert_same_value_and_gradients(ours, reference_negclip_loss(img, txt, neg, valid, 0.1), (img, txt, neg))
    # A masked negative is as if it were not there; more negatives only raise the loss.
    kept = torch.tensor(valid)
    torch.testing.assert_close(ours, ClipLoss(0.1).double()(img, txt, neg[kept]))
    assert ours > ClipLoss(0.1).double()(img, txt)


def test_siglip_hard_negatives_match_the_reference_values_and_gradients() -> None:
    img, txt, neg = _hn_inputs()
    valid = [m % 3 != 0 for m in range(len(neg))]
    ours = SigLipLoss(scale=10.0, bias=-2.0, hard_negatives=True).double()(img, txt, neg, torch.tensor(valid))
    ref = reference_siglip_hn_loss(img, txt, neg, valid, 10.0, -2.0)
    assert_same_value_and_gradients(ours, ref, (img, txt, neg))


def test_hard_negatives_leave_the_text_to_image_side_unchanged() -> None:
    # The gradient reaching the images through the text->image softmax is the same with or without extra texts:
    # only the image->text half changes. Check it on clip_loss's two halves directly.
    img, txt, neg = _hn_inputs()
    scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    with_neg = clip_loss(img, txt, scale, negative_emb=neg)
    without = clip_loss(img, txt, scale)
    t2i = F.cross_entropy(10.0 * txt @ img.T, torch.arange(len(img)))
    i2t_with = F.cross_entropy(10.0 * img @ torch.cat([txt, neg]).T, torch.arange(len(img)))
    torch.testing.assert_close(with_neg, (i2t_with + t2i) / 2)
    torch.testing.assert_close(without, (F.cross_entropy(10.0 * img @ txt.T, torch.arange(len(img))) + t2i) / 2)


# --- Several true pairs per batch (a caption shown by several images) -----------------------------------------------


def reference_multi_positive_clip(
    img: torch.Tensor, txt: torch.Tensor, tau: float, caption: list[int], negatives=None, negative_caption=None
) -> torch.Tensor:
    """Written out pair by pair: query i's loss is KL(uniform over its P positives || softmax), i.e. the mean over
    its positives p (every column with caption[i]) of -log(exp(s_ip) / sum_j exp(s_ij)), minus ln P; image rows
    also sum over the hard negatives that are not their own caption."""
    n = len(img)
    total = img.new_zeros(())
    for i in range(n):
        positives = [j for j in range(n) if caption[j] == caption[i]]
        row = [img[i] @ txt[j] / tau for j in range(n)]
        if negatives is not None:
            row += [img[i] @ negatives[m] / tau for m in range(len(negatives)) if negative_caption[m] != caption[i]]
        col = [txt[i] @ img[j] / tau for j in range(n)]
        row_lse, col_lse = torch.logsumexp(torch.stack(row), 0), torch.logsumexp(torch.stack(col), 0)
        total = total + sum(row_lse - row[p] for p in positives) / len(positives) - math.log(len(positives))
        total = total + sum(col_lse - col[p] for p in positives) / len(positives) - math.log(len(positives))
    return total / (2 * n)


def reference_multi_positive_siglip(
    img: torch.Tensor, txt: torch.Tensor, scale: float, bias: float, caption: list[int], negatives=None, neg_cap=None
) -> torch.Tensor:
    """-1/N sum_ij log sigmoid(z_ij (s x_i.y_j + b)), z_ij = +1 iff caption[i] == caption[j]; hard negatives z = -1
    except against the rows whose caption they spell (left out there)."""
    n = len(img)
    total = img.new_zeros(())
    for i in range(n):
        for j in range(n):
            z = 1.0 if caption[i] == caption[j] else -1.0
            total = total - F.logsigmoid(z * (scale * (img[i] @ txt[j]) + bias))
        if negatives is not None:
            for m in range(len(negatives)):
                if neg_cap[m] != caption[i]:
                    total = total - F.logsigmoid(-(scale * (img[i] @ negatives[m]) + bias))
    return total / n


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).requires_grad_()


CAPTIONS = [0, 3, 0, 1, 3, 0, 2]  # caption 0 shown by 3 images, caption 3 by 2


def test_clip_with_duplicated_captions_matches_the_multi_positive_formula_both_ways() -> None:
    torch.manual_seed(0)
    img, txt = _unit(7, 8), _unit(7, 8)
    txt_same = txt.detach()[torch.tensor([0, 1, 0, 3, 1, 0, 6])].clone().requires_grad_()  # duplicates: equal texts
    for texts in (txt, txt_same):
        ours = ClipLoss(0.1).double()(img, texts, caption_id=torch.tensor(CAPTIONS))
        assert_same_value_and_gradients(ours, reference_multi_positive_clip(img, texts, 0.1, CAPTIONS), (img, texts))
    # Each direction alone: the image->text and text->image halves are both multi-positive (swap the roles).
    ours_swapped = ClipLoss(0.1).double()(txt, img, caption_id=torch.tensor(CAPTIONS))
    torch.testing.assert_close(ours_swapped, reference_multi_positive_clip(txt, img, 0.1, CAPTIONS))


def test_multi_positive_differs_from_the_diagonal_only_when_captions_repeat() -> None:
    torch.manual_seed(0)
    img, txt = _unit(7, 8), _unit(7, 8)
    unique = torch.arange(7) * 5  # any distinct ids
    for loss in (ClipLoss(0.1).double(), SigLipLoss(bias=-2.0).double()):
        torch.testing.assert_close(loss(img, txt, caption_id=unique), loss(img, txt), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(loss(img, txt, caption_id=torch.tensor(CAPTIONS)), loss(img, txt))
    off = ClipLoss(0.1, multi_positive=False).double()
    torch.testing.assert_close(off(img, txt, caption_id=torch.tensor(CAPTIONS)), off(img, txt), rtol=0, atol=0)


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -2.0), (3.0, 1.0)])
def test_siglip_with_duplicated_captions_labels_every_same_caption_pair_positive(scale: float, bias: float) -> None:
    torch.manual_seed(0)
    img, txt = _unit(7, 8), _unit(7, 8)
    ours = SigLipLoss(scale=scale, bias=bias).double()(img, txt, caption_id=torch.tensor(CAPTIONS))
    reference = reference_multi_positive_siglip(img, txt, scale, bias, CAPTIONS)
    assert_same_value_and_gradients(ours, reference, (img, txt))


def test_a_hard_negative_spelling_a_rows_caption_is_no_negative_for_that_row() -> None:
    """Negative 1 spells caption 3 (rows 1 and 4's truth), negative 2 caption 0; negative 3 is not valid at all."""
    torch.manual_seed(0)
    img, txt, neg = _unit(7, 8), _unit(7, 8), _unit(4, 8)
    negative_id, valid = torch.tensor([9, 3, 0, -1]), torch.tensor([True, True, True, False])
    kept = [0, 1, 2]  # the reference sees only the valid ones
    args = {"caption_id": torch.tensor(CAPTIONS), "negative_id": negative_id}
    clip = ClipLoss(0.1, hard_negatives=True).double()(img, txt, neg, valid, **args)
    clip_ref = reference_multi_positive_clip(img, txt, 0.1, CAPTIONS, neg[kept], negative_id[kept].tolist())
    assert_same_value_and_gradients(clip, clip_ref, (img, txt, neg))
    sig = SigLipLoss(scale=10.0, bias=-2.0, hard_negatives=True).double()(img, txt, neg, valid, **args)
    sig_ref = reference_multi_positive_siglip(img, txt, 10.0, -2.0, CAPTIONS, neg[kept], negative_id[kept].tolist())
    assert_same_value_and_gradients(sig, sig_ref, (img, txt, neg))


def test_siglip_bias_follows_the_global_batch_once_the_world_size_is_known() -> None:
    loss = SigLipLoss(batch_size=32)
    loss.set_world_size(4)
    assert loss.logit_bias.item() == pytest.approx(-math.log(128))
    fixed = SigLipLoss(batch_size=32, bias=-10.0)
    fixed.set_world_size(4)
    assert fixed.logit_bias.item() == -10.0  # a bias the config sets is kept


def test_multi_positive_clip_reaches_zero_when_each_row_spreads_evenly_over_its_positives() -> None:
    """The KL form: a batch of one caption's 3 identical texts and 3 images that match it and nothing else scores
    0 (the cross-entropy would be ln 3 however good the model); the diagonal-only loss keeps ln 3 on those rows."""
    emb = torch.eye(4)[[0, 0, 0, 1, 2, 3]]  # rows 0-2 one caption, rows 3-5 unique ones
    caption_id = torch.tensor([7, 7, 7, 1, 2, 3])
    assert ClipLoss(0.01)(emb, emb, caption_id=caption_id).item() < 1e-6
    diagonal_only = ClipLoss(0.01, multi_positive=False)(emb, emb, caption_id=caption_id).item()
    assert diagonal_only == pytest.approx(math.log(3) / 2, rel=1e-4)  # 3 of 6 rows at ln 3, both ways


def test_a_world_without_repeated_captions_trains_on_the_one_positive_path() -> None:
    """The seed world shows each caption once, so the module passes no caption ids and the loss is open_clip's
    label path, bit for bit; scenes repeats each caption 9 times and gets the ids."""
    from nanovlm.data.scenes import ScenesDataModule
    from nanovlm.data.shapes import ShapesDataModule

    assert not ShapesDataModule().repeats_captions
    assert ScenesDataModule().repeats_captions


def test_a_hard_negative_spelling_the_rows_caption_is_dropped_even_without_a_validity_mask() -> None:
    torch.manual_seed(0)
    img, txt, neg = _unit(7, 8), _unit(7, 8), _unit(2, 8)
    ids = {"caption_id": torch.tensor(CAPTIONS), "negative_id": torch.tensor([3, 9])}
    without = ClipLoss(0.1, hard_negatives=True).double()(img, txt, neg, None, **ids)
    with_all_valid = ClipLoss(0.1, hard_negatives=True).double()(img, txt, neg, torch.ones(2, dtype=torch.bool), **ids)
    torch.testing.assert_close(without, with_all_valid)
    torch.testing.assert_close(without, reference_multi_positive_clip(img, txt, 0.1, CAPTIONS, neg, [3, 9]))


def test_multi_positive_clip_is_computed_in_float32_under_bf16_autocast() -> None:
    """Like F.cross_entropy under autocast: the logsumexp of bf16 logits would lose the gradient's precision."""
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(64, 16), dim=-1), F.normalize(torch.randn(64, 16), dim=-1)
    ids = torch.randint(0, 20, (64,))
    exact = ClipLoss(0.02).double()(img.double(), txt.double(), caption_id=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ClipLoss(0.02)(img, txt, caption_id=ids)
    assert mixed.dtype == torch.float32
    assert float(mixed) == pytest.approx(float(exact), rel=2e-2)

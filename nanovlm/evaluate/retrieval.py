"""Retrieval recall and hard-negative accuracy of embeddings or score matrices computed outside training.

The same RetrievalRecall, tie rule and targets as the tasks' validation, so what `python -m nanovlm.evaluate`
reports of a checkpoint equals what training logged for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nanovlm.data.datamodule import WorldDataModule
from nanovlm.evaluate.metrics import RetrievalRecall, hard_negative_accuracy

if TYPE_CHECKING:
    from nanovlm.tasks.dual_encoder import DualEncoder


def retrieval(
    image_emb: torch.Tensor, text_emb: torch.Tensor, queries: torch.Tensor, truth: torch.Tensor | None = None
) -> dict[str, float]:
    """recall@1/5/10 and mean/median rank of `queries` (gallery rows of images) against the whole gallery, both ways.

    image_emb [N, D] every gallery image, text_emb [C, D] every gallery caption, truth [N, C] which belong together
    (`Gallery.truth`; None: image i shows caption i). image->text: each query image against all C captions, every
    caption it shows true. text->image: each caption the query images show, once, against all N images, every image
    showing it true. The same RetrievalRecall and targets as the tasks' validation, so the numbers agree with
    training.
    """
    return retrieval_from_scores(image_emb @ text_emb.T, queries, truth)


def retrieval_from_scores(
    scores: torch.Tensor, queries: torch.Tensor, truth: torch.Tensor | None = None
) -> dict[str, float]:
    """`retrieval` from the score matrix [N images, C captions], whatever scored it: a dual encoder's cosine, a
    captioner's log-likelihood (`Captioner.score_matrix`)."""
    if truth is None:
        truth = torch.eye(*scores.shape, dtype=torch.bool)
    out: dict[str, float] = {}
    i2t, t2i = RetrievalRecall(), RetrievalRecall()
    i2t.update(scores[queries], truth[queries], queries)  # [Q, C]
    asked = torch.nonzero(truth[queries].any(dim=0)).flatten()  # a caption asked by several query images: once
    t2i.update(scores.T[asked], truth[:, asked].T, asked)
    for direction, metric in (("i2t", i2t), ("t2i", t2i)):
        out.update({f"{direction}_{k}": float(v) for k, v in metric.compute().items()})
    return out


def hard_negatives(
    model: DualEncoder,
    datamodule: WorldDataModule,
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    items: torch.Tensor,
) -> dict[str, float]:
    """Hard-negative accuracy per kind on images `items`: as in validation, the image's cosine with its caption
    against its cosine with each generated negative (DualEncoder.score_pairs' score), ties failing."""
    caption = datamodule.caption_of[items]
    negatives = datamodule.caption_extras["negatives"][caption]  # [Q, K, L]
    with torch.no_grad():
        negative_emb = model.text_encoder(negatives.flatten(0, 1)).view(*negatives.shape[:2], -1)  # [Q, K, D]
    true = (image_emb[items] * text_emb[caption]).sum(-1)  # [Q]
    scores = (image_emb[items][:, None] * negative_emb).sum(-1)  # [Q, K]
    accuracy = hard_negative_accuracy(true, scores, datamodule.caption_extras["negative_valid"][caption])
    return {kind: float(a) for kind, a in zip(datamodule.negative_kinds, accuracy, strict=True)}

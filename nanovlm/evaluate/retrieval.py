"""Retrieval recall and hard-negative accuracy of embeddings or score matrices computed outside training.

The same RetrievalRecall, tie rule and targets as the tasks' validation, so what `python -m nanovlm.evaluate`
reports of a checkpoint equals what training logged for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nanovlm.data.datamodule import Gallery, WorldDataModule
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


def split_rows(datamodule: WorldDataModule, gallery: Gallery) -> dict[str, torch.Tensor]:
    """{split: gallery rows of its images}: train, val and all for a whole-world gallery; val alone for a val one."""
    image_index = gallery.image_index.cpu()
    rows = {}
    for split, idx in (("train", datamodule.train_idx), ("val", datamodule.val_idx)):
        found = torch.nonzero(torch.isin(image_index, idx.cpu())).flatten()
        if len(found):
            rows[split] = found
    if len(rows) != 1 or len(next(iter(rows.values()))) != len(image_index):  # "all" only where it adds something
        rows["all"] = torch.arange(len(image_index))
    return rows


def gallery_texts(datamodule: WorldDataModule, gallery: Gallery) -> list[str]:
    """The caption text of each gallery column."""
    return [datamodule.captions[int(c)] for c in gallery.caption_index.tolist()]


def table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'':14}" + "".join(
        f"{d + ' ' + k:>10}" for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10", "mean", "med")
    )
    lines = [head]
    for name, m in rows.items():
        cells = [m[f"{d}_{k}"] for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")]
        lines.append(f"{name:14}" + "".join(f"{c:10.3f}" for c in cells))
    return "\n".join(lines)

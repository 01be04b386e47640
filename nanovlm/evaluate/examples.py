"""Retrieval examples: the picture every dataset can have.

The embedding pictures (plots.py) colour each point by a caption attribute (colour, shape, position), which only
the synthetic worlds name. A dataset of one's own has none, but it always has a gallery: this draws a few seeded
caption queries, each with its top-k gallery images and, last, its true image with the rank it got. Green titles
are true images, red ones false; the rank follows the one ranking rule (`ranking.true_item_rank`: ties fail), so
the picture agrees with val/t2i_R@k.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanovlm.data.datamodule import Gallery
from nanovlm.evaluate.figures import pyplot, save_figure
from nanovlm.evaluate.ranking import true_item_rank


@dataclass(frozen=True)
class Examples:
    """Text->image examples: `queries` [Q] gallery columns, `top` [Q, k] gallery rows best first, `scores` [Q, k]
    their scores, `hit` [Q, k] whether each is a true image, `truth` [Q] the row of each query's best-scoring true
    image, `rank` [Q] its 1-based rank."""

    queries: torch.Tensor
    top: torch.Tensor
    scores: torch.Tensor
    hit: torch.Tensor
    truth: torch.Tensor
    rank: torch.Tensor


def pick_examples(scores: torch.Tensor, truth: torch.Tensor, queries: torch.Tensor, k: int) -> Examples:
    """The examples of caption `queries` [Q] given scores [Q, N] (each query against every image) and the
    gallery's truth [N, C]."""
    true = truth[:, queries].T  # [Q, N]
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    best_true = scores.masked_fill(~true, float("-inf")).argmax(dim=1)  # [Q]
    hit = true.gather(1, top.indices)  # [Q, k]
    return Examples(queries, top.indices, top.values, hit, best_true, true_item_rank(scores, true))


@torch.no_grad()
def retrieval_examples(
    path: Path, model: Any, gallery: Gallery, captions: list[str], n_queries: int = 6, k: int = 5, seed: int = 0
) -> Path:
    """Draw `n_queries` seeded caption queries of `gallery` (text->image, against all its images) to `path`.
    `model` is a dual encoder (encode_images, text_encoder); `captions` the text of each gallery column."""
    was_training = model.training
    model.eval()
    image_emb = model.encode_images(gallery.images)  # [N, D]
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randperm(len(gallery.tokens), generator=generator)[:n_queries].sort().values
    text_emb = model.text_encoder(gallery.tokens[queries].to(model.device))  # [Q, D]
    model.train(was_training)
    scores = (text_emb @ image_emb.T).float().cpu()
    examples = pick_examples(scores, gallery.truth.cpu(), queries, k)
    return draw(path, examples, gallery.images.cpu(), captions)


def draw(path: Path, examples: Examples, images: torch.Tensor, captions: list[str]) -> Path:
    """One row per query: its caption (wrapped, on the left), its top-k images, its true image. Margins are set by
    hand (no tight bounding box: this is drawn at the end of every such run)."""
    plt = pyplot()
    n_queries, k = examples.top.shape
    width, height = 2.5 + 1.6 * (k + 1), 1.9 * n_queries + 0.6
    fig, axes = plt.subplots(n_queries, k + 1, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=2.4 / width, right=0.99, top=1 - 0.75 / height, bottom=0.1 / height, hspace=0.45)
    for q in range(n_queries):
        column = int(examples.queries[q])
        axes[q, 0].text(
            -0.15, 0.5, textwrap.fill(captions[column], 26), transform=axes[q, 0].transAxes, ha="right", va="center"
        )
        cells = [(int(r), f"{j + 1}. {float(s):+.2f}", bool(h)) for j, (r, s, h) in enumerate(
            zip(examples.top[q], examples.scores[q], examples.hit[q], strict=True)
        )]  # fmt: skip
        cells.append((int(examples.truth[q]), f"truth: rank {int(examples.rank[q])}", True))
        for ax, (row, title, hit) in zip(axes[q], cells, strict=True):
            ax.imshow(images[row].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=8, color="green" if hit else "red")
            ax.axis("off")
    fig.suptitle(f"text -> image against the {len(images)} gallery images: the top {k}, then the true image")
    return save_figure(fig, path, tight=False)

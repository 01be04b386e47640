"""Zero-shot attribute classification (CLIP's prompt ensembles), and the attribute tables it reads from a world.

A world names its attributes and the value of each for every caption (`WorldDataModule.attributes()`: the seed
world's colour, shape and position; a scene's relation and first object). Both the classification here and the
pictures (nanovlm.evaluate.plots) read them through `world_attributes`, so neither names a world.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nanovlm.data.shapes import ATTRIBUTE_VALUES
from nanovlm.evaluate.ranking import true_item_rank

# An attribute table {attribute: its values}, in caption order: the seed world's is
# nanovlm.data.shapes.ATTRIBUTE_VALUES (colour, shape, position); a world's `attributes()` gives its own
# (world_attributes).
AttributeValues = dict[str, tuple[str, ...]]


def world_attributes(datamodule: Any) -> tuple[torch.Tensor, list[tuple[str, ...]], AttributeValues]:
    """What the pictures of a world draw: one image per distinct caption (the first that shows it; all 243 for
    shapes, 1,404 for scenes), each caption's attribute values, and the attribute table."""
    first_image = torch.full((len(datamodule.captions),), len(datamodule.images), dtype=torch.long)
    caption_of = datamodule.caption_of.cpu()
    first_image.scatter_reduce_(0, caption_of, torch.arange(len(caption_of)), reduce="amin")
    attributes = datamodule.attributes()
    table = {name: tuple(values) for name, (values, _) in attributes.items()}
    columns = [[values[i] for i in ids.tolist()] for values, ids in attributes.values()]
    return first_image, list(zip(*columns, strict=True)), table


def attribute_prototypes(
    text_emb: torch.Tensor,
    triples: list[tuple[str, ...]],
    attribute: str,
    table: AttributeValues = ATTRIBUTE_VALUES,
) -> torch.Tensor:
    """[V, D] prompt ensembles: per value of `attribute`, the renormalised mean embedding of every
    caption that has that value (CLIP's zero-shot classifier with prompt ensembling)."""
    slot = list(table).index(attribute)
    values = table[attribute]
    labels = torch.tensor([values.index(t[slot]) for t in triples])
    sums = torch.zeros(len(values), text_emb.shape[1]).index_add_(0, labels, text_emb.float())
    return F.normalize(sums, dim=-1)  # the mean's direction = the sum's direction


def zero_shot(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    triples: list[tuple[str, ...]],
    items: torch.Tensor,
    caption_of: torch.Tensor | None = None,
    table: AttributeValues = ATTRIBUTE_VALUES,
) -> dict[str, dict[str, Any]]:
    """For each attribute of `table`: accuracy of the nearest prompt ensemble on images `items`, and the
    confusion matrix counts [V, V] (rows true value, columns predicted). Prompts use all captions; `triples`
    holds each caption's values, and image i's truth is its caption's (caption_of; None: caption i)."""
    caption_of = torch.arange(len(image_emb)) if caption_of is None else caption_of
    out: dict[str, dict[str, Any]] = {}
    for slot, attribute in enumerate(table):
        values = table[attribute]
        prototypes = attribute_prototypes(text_emb, triples, attribute, table)
        scores = image_emb[items].float() @ prototypes.T  # [Q, V]
        predicted = scores.argmax(dim=1)  # [Q], what the confusion matrix draws
        true = torch.tensor([values.index(triples[c][slot]) for c in caption_of[items].tolist()])
        confusion = torch.zeros(len(values), len(values), dtype=torch.long)
        confusion.index_put_((true, predicted), torch.ones_like(true), accumulate=True)
        correct = true_item_rank(scores, true) == 1  # the one ranking rule: a tie with another value is a miss
        out[attribute] = {"accuracy": float(correct.float().mean()), "confusion": confusion}
    return out

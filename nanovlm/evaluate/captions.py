"""What `nanovlm.evaluate` reports of a captioning checkpoint (loss=cap, cappa, coca): the captions it writes,
and its retrieval and hard-negative accuracy under its own score, as validation computes them."""

from __future__ import annotations

from typing import Any

import torch

from nanovlm.data.datamodule import WorldDataModule
from nanovlm.evaluate.metrics import hard_negative_accuracy
from nanovlm.evaluate.retrieval import gallery_texts, retrieval_from_scores, split_rows, table
from nanovlm.models.decoder import likelihood_passes
from nanovlm.objectives.captioning import MAX_LIKELIHOOD_PAIRS
from nanovlm.tasks.captioner import Captioner


@torch.no_grad()
def evaluate_captioner(
    model: Captioner, datamodule: WorldDataModule, image: tuple[torch.Tensor, str] | None, k: int, scores: bool = True
) -> dict[str, Any]:
    """A captioning checkpoint: the caption accuracy of each split (the same greedy decoding and CaptionAccuracy as
    validation), the hard-negative accuracy and the retrieval recall under the model's own score (as validation),
    and for `image=` the caption it writes and its top-k captions by that score. `scores=False` (loss=coca, whose
    cosine numbers the contrastive report already gives) leaves out retrieval, hard negatives and the top-k."""
    gallery = datamodule.gallery()
    images, captions = model.read_images(gallery.images), model.read_captions(gallery.tokens)
    splits = split_rows(datamodule, gallery)
    names = {s: f"{s} ({len(idx)})" for s, idx in splits.items()}
    written = model.write(images.memory, gallery.tokens)  # [N, L] one caption per image
    first_caption = gallery.truth.float().argmax(dim=1)  # [N] the column of each image's (first) caption
    results: dict[str, Any] = {"captions": {}}
    for split, rows in splits.items():
        metric = model.caption_metric()
        metric.update(written[rows], gallery.tokens[first_caption[rows]], gallery.image_index[rows])
        results["captions"][split] = {name: float(v) for name, v in metric.compute().items()}
        print(f"captions  {names[split]:10}" + "".join(f"  {a} {v:.3f}" for a, v in results["captions"][split].items()))
    passes = likelihood_passes(len(images.emb), gallery.tokens)
    if scores and passes <= MAX_LIKELIHOOD_PAIRS:
        matrix = model.score_matrix(images, captions)  # [N, C]
        results["retrieval"] = {s: retrieval_from_scores(matrix, idx, gallery.truth) for s, idx in splits.items()}
        print(f"retrieval by {model.loss.score}, queries ranked against the whole gallery")
        print(table({names[s]: m for s, m in results["retrieval"].items()}))
    elif scores:
        print(f"retrieval by likelihood skipped: {passes:,} decoder passes (more than {MAX_LIKELIHOOD_PAIRS:,})")
    if scores and datamodule.negative_kinds:
        results["hard_negatives"] = {}
        for split in [s for s in ("val", "all") if s in splits]:
            rows = splits[split]
            caption = datamodule.caption_of[gallery.image_index[rows]]  # [Q] each image's caption id
            negatives = datamodule.caption_extras["negatives"][caption]  # [Q, K, L]
            accuracy = hard_negative_accuracy(
                model.pair_scores(images.take(rows), captions.take(gallery.columns(caption))),
                model.negative_scores(images.take(rows), negatives),
                datamodule.caption_extras["negative_valid"][caption],
            )
            results["hard_negatives"][split] = dict(zip(datamodule.negative_kinds, map(float, accuracy), strict=True))
            print(
                f"hard neg. {names[split]:10}"
                + "".join(f"  {a} {v:.3f}" for a, v in results["hard_negatives"][split].items())
            )
    if image is not None:
        picture, description = image
        one = model.read_images(picture[None])
        generated = datamodule.tokenizer.decode(model.write(one.memory, gallery.tokens)[0])
        print(f"image       {description} -> generated caption: {generated!r}")
        results["image"] = {"generated": generated}
        if scores:
            candidates = model.score_matrix(one, captions)[0]  # [C]
            top = candidates.topk(min(k, len(candidates)))
            texts = gallery_texts(datamodule, gallery)
            found = [texts[i] for i in top.indices.tolist()]
            print(f"image       {description} -> top {len(found)} captions by {model.loss.score}")
            for rank, (c, s) in enumerate(zip(found, top.values.tolist(), strict=True), 1):
                print(f"  {rank:2d}. {s:+.3f}  {c}")
            results["image"].update({"captions": found, "scores": top.values.tolist()})
    return results

"""Evaluate a checkpoint: retrieval recall, zero-shot attribute classification, pictures, a retrieval demo;
for a captioning checkpoint (loss=cap, loss=coca) also the captions it writes.

    python -m nanovlm.evaluate ckpt=outputs/<date>/<time>/checkpoints/last.ckpt
    python -m nanovlm.evaluate ckpt=... query="red circle top-left" top_k=5
    python -m nanovlm.evaluate ckpt=... image=17          # or image=path/to/32x32.png

The checkpoint carries the resolved training config (`checkpoint["nanovlm"]["config"]`), so the same encoders,
data split and gallery are rebuilt from it; nothing but weights and plain values is unpickled.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from nanovlm import checkpoints
from nanovlm.captioner import Captioner
from nanovlm.captioning import MAX_LIKELIHOOD_PAIRS, likelihood_passes
from nanovlm.data import IMAGE_SIZE, WorldDataModule
from nanovlm.metrics import RetrievalRecall, hard_negative_accuracy
from nanovlm.module import DualEncoder
from nanovlm.plots import ATTRIBUTE_VALUES, AttributeValues, embed_gallery, world_attributes
from nanovlm.ranking import true_item_rank


@dataclass
class EvalConfig:
    """Command-line keys of `python -m nanovlm.evaluate key=value ...`."""

    ckpt: str = "???"
    out: str | None = None  # where PNGs and metrics.json go; default: <run_dir>/eval next to checkpoints/
    query: str | None = None  # a caption -> its top_k images as a PNG grid
    image: str | None = None  # a gallery image index (0-242 for shapes) or a 32x32 image file -> its top_k captions
    top_k: int = 5
    plots: bool = True  # the embedding pictures and zero-shot confusion matrices


def load_model(path: str | Path) -> tuple[DualEncoder, dict[str, Any]]:
    """The model a training checkpoint describes, with its weights, and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ckpt: no checkpoint file at {str(path)!r}")
    checkpoint = checkpoints.load_checkpoint(path, key="ckpt")
    config = checkpoints.saved_config(checkpoint)
    if config is None:
        raise ValueError(f"ckpt: {str(path)!r} has no 'nanovlm' config entry; was it written by nanovlm's train.py?")
    from nanovlm.training import build_model

    model = build_model(OmegaConf.create(config))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"ckpt: the weights in {str(path)!r} do not fit the model its config describes: {err}"
        ) from err
    return model.eval(), config


def retrieval(
    image_emb: torch.Tensor, text_emb: torch.Tensor, queries: torch.Tensor, caption_of: torch.Tensor | None = None
) -> dict[str, float]:
    """recall@1/5/10 and mean/median rank of `queries` (image indices) against the whole gallery, both ways.

    image_emb [N, D] every image, text_emb [C, D] every distinct caption, caption_of [N] each image's caption
    (None: image i shows caption i). image->text: each query image's one true caption among all C.
    text->image: each distinct caption of the query images, once, against all N images, every image showing it
    true. The same RetrievalRecall and scoring as DualEncoder's validation, so the numbers agree with training.
    """
    return retrieval_from_scores(image_emb @ text_emb.T, queries, caption_of)


def retrieval_from_scores(
    scores: torch.Tensor, queries: torch.Tensor, caption_of: torch.Tensor | None = None
) -> dict[str, float]:
    """`retrieval` from the score matrix [N images, C captions], whatever scored it: a dual encoder's cosine, a
    captioner's log-likelihood (`Captioner.score_matrix`)."""
    caption_of = torch.arange(len(scores)) if caption_of is None else caption_of
    captions = caption_of[queries]
    out: dict[str, float] = {}
    i2t, t2i = RetrievalRecall(), RetrievalRecall()
    i2t.update(scores[queries], captions, queries)  # [Q, C]
    shows = caption_of[None, :] == captions[:, None]  # [Q, N]
    t2i.update(scores.T[captions], shows, captions)  # a caption asked twice counts once
    for direction, metric in (("i2t", i2t), ("t2i", t2i)):
        out.update({f"{direction}_{k}": float(v) for k, v in metric.compute().items()})
    return out


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


def load_image(spec: str, datamodule: WorldDataModule) -> tuple[torch.Tensor, str]:
    """`image=` as a gallery image index or a 32x32 image file -> ([3, 32, 32] in [0, 1], description)."""
    n = len(datamodule.images)
    if re.fullmatch(r"\d+", spec):
        index = int(spec)
        if index >= n:
            raise ValueError(f"image: a gallery index is 0..{n - 1}, got {index}")
        caption = datamodule.captions[int(datamodule.caption_of[index])]
        return datamodule.images[index], f"gallery image {index} ({caption})"
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"image: neither a gallery index (0..{n - 1}) nor an existing file: {spec!r}")
    picture = Image.open(path).convert("RGB")
    if picture.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"image: the file must be {IMAGE_SIZE}x{IMAGE_SIZE} pixels, got {picture.size[0]}x{picture.size[1]}"
        )
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).view(IMAGE_SIZE, IMAGE_SIZE, 3)
    return pixels.permute(2, 0, 1).float().div(255), f"file {spec}"  # [3, H, W]


def _table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'':14}" + "".join(
        f"{d + ' ' + k:>10}" for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10", "mean", "med")
    )
    lines = [head]
    for name, m in rows.items():
        cells = [m[f"{d}_{k}"] for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")]
        lines.append(f"{name:14}" + "".join(f"{c:10.3f}" for c in cells))
    return "\n".join(lines)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluation `cfg` asks for, print a report, write metrics.json and PNGs to cfg.out."""
    model, train_cfg = load_model(cfg.ckpt)
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.ckpt).resolve().parent.parent / "eval"
    datamodule: WorldDataModule = instantiate(train_cfg["data"])
    if cfg.query is not None:  # fail before the work, not after it
        datamodule.tokenizer().encode(cfg.query)
    image = load_image(cfg.image, datamodule) if cfg.image is not None else None
    if model.text_encoder is None:  # loss=cap: no embeddings to compare; it is evaluated by what it writes and scores
        results = evaluate_captioner(model, datamodule, image, cfg.top_k)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps({"ckpt": str(cfg.ckpt), **results}, indent=2))
        print(f"written     {out_dir}/")
        return results
    _, triples, table = world_attributes(datamodule)
    caption_of = datamodule.caption_of
    gallery = datamodule.gallery()
    with torch.no_grad():
        image_emb = model.encode_images(gallery["image"]).float().cpu()
    _, text_emb = embed_gallery(model, {"image": gallery["image"][:1], "tokens": gallery["tokens"]})
    splits = {"train": datamodule.train_idx, "val": datamodule.val_idx, "all": torch.arange(len(image_emb))}
    names = {s: f"{s} ({len(idx)})" for s, idx in splits.items()}
    results: dict[str, Any] = {"ckpt": str(cfg.ckpt), "split": train_cfg["data"].get("split", "random")}
    results["retrieval"] = {s: retrieval(image_emb, text_emb, idx, caption_of) for s, idx in splits.items()}
    zs = {s: zero_shot(image_emb, text_emb, triples, splits[s], caption_of, table) for s in ("val", "all")}
    results["zero_shot"] = {s: {a: r["accuracy"] for a, r in zs[s].items()} for s in zs}
    if datamodule.negative_kinds:
        results["hard_negatives"] = {
            s: hard_negatives(model, datamodule, image_emb, text_emb, splits[s]) for s in ("val", "all")
        }

    gallery_words = f"all {len(image_emb)} images / {len(text_emb)} captions"
    if len(image_emb) == len(text_emb):
        gallery_words = f"all {len(image_emb)}"
    print(f"checkpoint  {cfg.ckpt}  (data.split={results['split']}; queries ranked against {gallery_words})")
    print(_table({names[s]: m for s, m in results["retrieval"].items()}))
    for s, acc in results["zero_shot"].items():
        print(f"zero-shot {names[s]:10}" + "".join(f"  {a} {v:.3f}" for a, v in acc.items()))
    for s, acc in results.get("hard_negatives", {}).items():
        print(f"hard neg. {names[s]:10}" + "".join(f"  {kind} {v:.3f}" for kind, v in acc.items()))

    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.plots:
        from nanovlm import plots

        first_image, _, _ = world_attributes(datamodule)
        pairs = (image_emb[first_image], text_emb)  # one image per caption
        pictures = plots.draw_embedding_pictures(out_dir, pairs, datamodule.captions, triples, table=table)
        for attribute, r in zs["all"].items():
            title = f"zero-shot {attribute}, all {len(image_emb)} images: accuracy {r['accuracy']:.3f}"
            path = out_dir / f"zero_shot_{attribute.replace(' ', '_')}.png"
            pictures[f"zero_shot_{attribute}"] = plots.confusion_matrix(path, r["confusion"], table[attribute], title)
        results["pictures"] = {k: str(v) for k, v in pictures.items()}
    if cfg.query is not None:
        results["query"] = query_images(model, cfg.query, cfg.top_k, datamodule, image_emb, out_dir)
    if image is not None:
        results["image"] = image_captions(model, image, cfg.top_k, datamodule.captions, text_emb)
    if isinstance(model, Captioner):  # loss=coca: also the captions it writes
        results.update(evaluate_captioner(model, datamodule, image, cfg.top_k, scores=False))
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"written     {out_dir}/")
    return results


@torch.no_grad()
def query_images(
    model: DualEncoder, text: str, k: int, datamodule: WorldDataModule, image_emb: torch.Tensor, out_dir: Path
) -> dict[str, Any]:
    """The top-k gallery images for a caption, printed and drawn as a PNG grid with their scores."""
    tokens = datamodule.tokenizer().encode(text)[None]  # [1, L]; unknown words raise a ValueError naming them
    scores = (model.text_encoder(tokens) @ image_emb.T)[0]  # [N]
    top = scores.topk(min(k, len(scores)))
    captions = [datamodule.captions[int(datamodule.caption_of[i])] for i in top.indices.tolist()]
    print(f"query       {text!r} -> top {len(captions)} images")
    for rank, (c, s) in enumerate(zip(captions, top.values.tolist(), strict=True), 1):
        print(f"  {rank:2d}. {s:+.3f}  {c}")
    from nanovlm.plots import image_grid

    path = out_dir / f"query_{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')}.png"
    titles = [f"{c}\n{s:+.3f}" for c, s in zip(captions, top.values.tolist(), strict=True)]
    image_grid(path, datamodule.images[top.indices], titles, f"query: {text!r}")
    print(f"  grid: {path}")
    return {"captions": captions, "scores": top.values.tolist(), "png": str(path)}


@torch.no_grad()
def image_captions(
    model: DualEncoder, loaded: tuple[torch.Tensor, str], k: int, captions: list[str], text_emb: torch.Tensor
) -> dict:
    """The top-k captions for an image (load_image's result: a gallery index or a 32x32 file)."""
    image, description = loaded
    scores = (model.image_encoder(image[None]) @ text_emb.T)[0]  # [N]
    top = scores.topk(min(k, len(scores)))
    found = [captions[i] for i in top.indices.tolist()]
    print(f"image       {description} -> top {len(found)} captions")
    for rank, (c, s) in enumerate(zip(found, top.values.tolist(), strict=True), 1):
        print(f"  {rank:2d}. {s:+.3f}  {c}")
    return {"captions": found, "scores": top.values.tolist()}


@torch.no_grad()
def evaluate_captioner(
    model: Captioner, datamodule: WorldDataModule, image: tuple[torch.Tensor, str] | None, k: int, scores: bool = True
) -> dict[str, Any]:
    """A captioning checkpoint: the caption accuracy of each split (the same greedy decoding and CaptionAccuracy as
    validation), the hard-negative accuracy and the retrieval recall under the model's own score (as validation),
    and for `image=` the caption it writes and its top-k captions by that score. `scores=False` (loss=coca, whose
    cosine numbers the contrastive report already gives) leaves out retrieval, hard negatives and the top-k."""
    gallery = datamodule.gallery()
    images, captions = model.read_images(gallery["image"]), model.read_captions(gallery["tokens"])
    splits = {"train": datamodule.train_idx, "val": datamodule.val_idx, "all": torch.arange(len(images.emb))}
    names = {s: f"{s} ({len(idx)})" for s, idx in splits.items()}
    written = model.write(images.memory, gallery["tokens"])  # [N, L] one caption per image
    caption_of = datamodule.caption_of
    results: dict[str, Any] = {"captions": {}}
    for split, index in splits.items():
        metric = model.caption_metric()
        metric.update(written[index], gallery["tokens"][caption_of[index]], index)
        results["captions"][split] = {name: float(v) for name, v in metric.compute().items()}
        print(f"captions  {names[split]:10}" + "".join(f"  {a} {v:.3f}" for a, v in results["captions"][split].items()))
    passes = likelihood_passes(len(images.emb), gallery["tokens"])
    if scores and passes <= MAX_LIKELIHOOD_PAIRS:
        matrix = model.score_matrix(images, captions)  # [N, C]
        results["retrieval"] = {s: retrieval_from_scores(matrix, idx, caption_of) for s, idx in splits.items()}
        print(f"retrieval by {model.loss.score}, queries ranked against the whole gallery")
        print(_table({names[s]: m for s, m in results["retrieval"].items()}))
    elif scores:
        print(f"retrieval by likelihood skipped: {passes:,} decoder passes (more than {MAX_LIKELIHOOD_PAIRS:,})")
    if scores and datamodule.negative_kinds:
        results["hard_negatives"] = {}
        for split in ("val", "all"):
            index = splits[split]
            caption = caption_of[index]
            negatives = datamodule.caption_extras["negatives"][caption]  # [Q, K, L]
            accuracy = hard_negative_accuracy(
                model.pair_scores(images.take(index), captions.take(caption)),
                model.negative_scores(images.take(index), negatives),
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
        generated = datamodule.tokenizer().decode(model.write(one.memory, gallery["tokens"])[0])
        print(f"image       {description} -> generated caption: {generated!r}")
        results["image"] = {"generated": generated}
        if scores:
            candidates = model.score_matrix(one, captions)[0]  # [C]
            top = candidates.topk(min(k, len(candidates)))
            found = [datamodule.captions[i] for i in top.indices.tolist()]
            print(f"image       {description} -> top {len(found)} captions by {model.loss.score}")
            for rank, (c, s) in enumerate(zip(found, top.values.tolist(), strict=True), 1):
                print(f"  {rank:2d}. {s:+.3f}  {c}")
            results["image"].update({"captions": found, "scores": top.values.tolist()})
    return results


def parse_args(argv: list[str]) -> EvalConfig:
    """`key=value` arguments (Hydra-style) onto EvalConfig; unknown keys and missing ckpt are errors."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments are key=value (keys: ckpt, out, query, image, top_k, plots), got {bad}")
    if not any(a.startswith("ckpt=") for a in argv):
        raise ValueError("ckpt is required: python -m nanovlm.evaluate ckpt=<a .ckpt from train.py> [key=value ...]")
    schema = OmegaConf.structured(EvalConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(argv))
        cfg: EvalConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except Exception as err:  # omegaconf's errors say what is wrong; prefix the key it was about
        key = getattr(err, "full_key", None)
        raise ValueError(f"{key + ': ' if key else ''}{str(err).splitlines()[0]}") from err
    if cfg.top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {cfg.top_k}")
    if cfg.image is not None:
        cfg.image = str(cfg.image)
    return cfg


def main(argv: list[str] | None = None) -> int:
    try:
        evaluate(parse_args(sys.argv[1:] if argv is None else argv))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

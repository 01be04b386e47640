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
from nanovlm.captioner import SHAPES_SLOTS, Captioner
from nanovlm.captioning import slot_vocabulary
from nanovlm.data import IMAGE_SIZE, VOCAB, ShapesDataModule, Tokenizer, all_triples
from nanovlm.metrics import CaptionAccuracy, RetrievalRecall
from nanovlm.module import DualEncoder
from nanovlm.plots import ATTRIBUTE_VALUES, ATTRIBUTES, embed_gallery


@dataclass
class EvalConfig:
    """Command-line keys of `python -m nanovlm.evaluate key=value ...`."""

    ckpt: str = "???"
    out: str | None = None  # where PNGs and metrics.json go; default: <run_dir>/eval next to checkpoints/
    query: str | None = None  # a caption -> its top_k images as a PNG grid
    image: str | None = None  # a gallery index (0-242) or a 32x32 image file -> its top_k captions
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


def retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor, queries: torch.Tensor) -> dict[str, float]:
    """recall@1/5/10 and mean/median rank of `queries` (item indices) against the whole gallery, both ways.

    The same RetrievalRecall and scoring as DualEncoder's validation, so the numbers agree with training.
    """
    return retrieval_from_scores(image_emb @ text_emb.T, queries)


def retrieval_from_scores(scores: torch.Tensor, queries: torch.Tensor) -> dict[str, float]:
    """`retrieval` from the gallery's score matrix [N images, N captions], whatever scored it (a dual encoder's
    cosine, a captioner's log-likelihood): image queries rank a row, caption queries a column."""
    out: dict[str, float] = {}
    for direction, matrix in (("i2t", scores), ("t2i", scores.T)):
        metric = RetrievalRecall()
        metric.update(matrix[queries], queries, queries)  # [Q, N]; item i's true column is i
        out.update({f"{direction}_{k}": float(v) for k, v in metric.compute().items()})
    return out


def attribute_prototypes(text_emb: torch.Tensor, triples: list[tuple[str, str, str]], attribute: str) -> torch.Tensor:
    """[V, D] prompt ensembles: per value of `attribute`, the renormalised mean embedding of every
    caption that has that value (CLIP's zero-shot classifier with prompt ensembling)."""
    slot = ATTRIBUTES.index(attribute)
    values = ATTRIBUTE_VALUES[attribute]
    labels = torch.tensor([values.index(t[slot]) for t in triples])
    sums = torch.zeros(len(values), text_emb.shape[1]).index_add_(0, labels, text_emb.float())
    return F.normalize(sums, dim=-1)  # the mean's direction = the sum's direction


def zero_shot(
    image_emb: torch.Tensor, text_emb: torch.Tensor, triples: list[tuple[str, str, str]], items: torch.Tensor
) -> dict[str, dict[str, Any]]:
    """For each attribute: accuracy of the nearest prompt ensemble on images `items`, and the confusion
    matrix counts [V, V] (rows true value, columns predicted). Prompts use all captions."""
    out: dict[str, dict[str, Any]] = {}
    for slot, attribute in enumerate(ATTRIBUTES):
        values = ATTRIBUTE_VALUES[attribute]
        prototypes = attribute_prototypes(text_emb, triples, attribute)
        predicted = (image_emb[items].float() @ prototypes.T).argmax(dim=1)  # [Q]
        true = torch.tensor([values.index(triples[i][slot]) for i in items.tolist()])
        confusion = torch.zeros(len(values), len(values), dtype=torch.long)
        confusion.index_put_((true, predicted), torch.ones_like(true), accumulate=True)
        out[attribute] = {"accuracy": float((predicted == true).float().mean()), "confusion": confusion}
    return out


def load_image(spec: str) -> tuple[torch.Tensor, str]:
    """`image=` as a gallery index or a 32x32 image file -> ([3, 32, 32] in [0, 1], description)."""
    if re.fullmatch(r"\d+", spec):
        index = int(spec)
        triples = all_triples()
        if index >= len(triples):
            raise ValueError(f"image: a gallery index is 0..{len(triples) - 1}, got {index}")
        from nanovlm.data import build_tensors

        return build_tensors()[0][index], f"gallery image {index} ({' '.join(triples[index])})"
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"image: neither a gallery index (0..242) nor an existing file: {spec!r}")
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
    datamodule: ShapesDataModule = instantiate(train_cfg["data"])
    triples = all_triples()
    splits = {"train": datamodule.train_idx, "val": datamodule.val_idx, "all": torch.arange(len(triples))}
    names = {s: f"{s} ({len(idx)})" for s, idx in splits.items()}
    results: dict[str, Any] = {"ckpt": str(cfg.ckpt), "split": train_cfg["data"].get("split", "random")}
    scores = gallery_scores(model, datamodule.gallery())
    results["retrieval"] = {s: retrieval_from_scores(scores, idx) for s, idx in splits.items()}
    print(f"checkpoint  {cfg.ckpt}  (data.split={results['split']}; queries ranked against all 243)")
    print(_table({names[s]: m for s, m in results["retrieval"].items()}))
    text_emb = None
    if model.text_encoder is not None:  # both embeddings: zero-shot prompts and the embedding pictures
        image_emb, text_emb = embed_gallery(model, datamodule.gallery())
        zs = {s: zero_shot(image_emb, text_emb, triples, splits[s]) for s in ("val", "all")}
        results["zero_shot"] = {s: {a: r["accuracy"] for a, r in zs[s].items()} for s in zs}
        for s, acc in results["zero_shot"].items():
            print(f"zero-shot {names[s]:10}" + "".join(f"  {a} {v:.3f}" for a, v in acc.items()))
    if isinstance(model, Captioner):
        results["captions"] = caption_accuracy(model, datamodule.gallery(), splits)
        for s, acc in results["captions"].items():
            print(f"captions  {names[s]:10}" + "".join(f"  {a} {v:.3f}" for a, v in acc.items()))

    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.plots and text_emb is not None:
        from nanovlm import plots

        pictures = plots.draw_embedding_pictures(out_dir, (image_emb, text_emb), datamodule.captions, triples)
        for attribute, r in zs["all"].items():
            title = f"zero-shot {attribute}, all 243 images: accuracy {r['accuracy']:.3f}"
            path = out_dir / f"zero_shot_{attribute}.png"
            pictures[f"zero_shot_{attribute}"] = plots.confusion_matrix(
                path, r["confusion"], ATTRIBUTE_VALUES[attribute], title
            )
        results["pictures"] = {k: str(v) for k, v in pictures.items()}
    if cfg.query is not None:
        results["query"] = query_images(model, cfg.query, cfg.top_k, datamodule, out_dir)
    if cfg.image is not None:
        results["image"] = image_captions(model, cfg.image, cfg.top_k, datamodule)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"written     {out_dir}/")
    return results


@torch.no_grad()
def gallery_scores(model: DualEncoder, gallery: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N images, N captions] scores of every gallery pair, the ones validation ranks with: cosine for a dual
    encoder, the captioner's own score (log-likelihood, or cosine for loss=coca) for a Captioner."""
    if isinstance(model, Captioner):
        return model.score_matrix(model.encode_images(gallery["image"]), model.encode_captions(gallery["tokens"]))
    image_emb, text_emb = embed_gallery(model, gallery)
    return image_emb @ text_emb.T


@torch.no_grad()
def caption_accuracy(model: Captioner, gallery: dict[str, torch.Tensor], splits: dict[str, torch.Tensor]) -> dict:
    """Per split, the share of images whose greedily written caption is exactly right, and per slot; the same
    decoding (constrained or not, as trained) and the same CaptionAccuracy as validation."""
    allowed = slot_vocabulary(gallery["tokens"], len(VOCAB)) if model.loss.constrained else None
    written = model.generate(gallery["image"], allowed)
    out = {}
    for split, index in splits.items():
        metric = CaptionAccuracy(SHAPES_SLOTS)
        metric.update(written[index], gallery["tokens"][index], index)
        out[split] = {k: float(v) for k, v in metric.compute().items()}
    return out


def _top_k(scores: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    top = scores.topk(min(k, len(scores)))
    return top.indices.tolist(), top.values.tolist()


@torch.no_grad()
def query_images(model: DualEncoder, text: str, k: int, datamodule: ShapesDataModule, out_dir: Path) -> dict[str, Any]:
    """The top-k gallery images for a caption, printed and drawn as a PNG grid with their scores."""
    tokens = Tokenizer().encode(text)[None]  # [1, 4]; unknown words raise a ValueError naming them
    indices, values = _top_k(gallery_scores(model, {"image": datamodule.images, "tokens": tokens})[:, 0], k)
    captions = [datamodule.captions[i] for i in indices]
    print(f"query       {text!r} -> top {len(captions)} images")
    for rank, (c, s) in enumerate(zip(captions, values, strict=True), 1):
        print(f"  {rank:2d}. {s:+.3f}  {c}")
    from nanovlm.plots import image_grid

    path = out_dir / f"query_{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')}.png"
    titles = [f"{c}\n{s:+.3f}" for c, s in zip(captions, values, strict=True)]
    image_grid(path, datamodule.images[indices], titles, f"query: {text!r}")
    print(f"  grid: {path}")
    return {"captions": captions, "scores": values, "png": str(path)}


@torch.no_grad()
def image_captions(model: DualEncoder, spec: str, k: int, datamodule: ShapesDataModule) -> dict:
    """The top-k captions for an image given as a gallery index or a 32x32 file; a Captioner also writes one."""
    image, description = load_image(spec)
    indices, values = _top_k(gallery_scores(model, {"image": image[None], "tokens": datamodule.tokens})[0], k)
    found = [datamodule.captions[i] for i in indices]
    out: dict[str, Any] = {"captions": found, "scores": values}
    if isinstance(model, Captioner):
        allowed = slot_vocabulary(datamodule.tokens, len(VOCAB)) if model.loss.constrained else None
        out["generated"] = Tokenizer().decode(model.generate(image[None], allowed)[0])
        print(f"image       {description} -> generated caption: {out['generated']!r}")
    print(f"image       {description} -> top {len(found)} captions")
    for rank, (c, s) in enumerate(zip(found, values, strict=True), 1):
        print(f"  {rank:2d}. {s:+.3f}  {c}")
    return out


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
        load_image(cfg.image)  # fail before the work, not after it
    if cfg.query is not None:
        Tokenizer().encode(cfg.query)
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

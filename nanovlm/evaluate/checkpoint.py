"""Evaluate a checkpoint: retrieval recall, zero-shot attribute classification, pictures, a retrieval demo;
for a captioning checkpoint (loss=cap, loss=coca) also the captions it writes.

    python -m nanovlm.evaluate ckpt=outputs/<date>/<time>/checkpoints/last.ckpt
    python -m nanovlm.evaluate ckpt=... query="red circle top-left" top_k=5
    python -m nanovlm.evaluate ckpt=... image=17          # or image=path/to/32x32.png
    python -m nanovlm.evaluate ckpt=<a data=vqa run> image=17 question="how many circles are there?"

The checkpoint carries the resolved training config (`checkpoint["nanovlm"]["config"]`), so the same encoders,
data split and gallery are rebuilt from it; nothing but weights and plain values is unpickled.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from nanovlm.data.datamodule import Gallery, WorldDataModule
from nanovlm.evaluate.captions import evaluate_captioner
from nanovlm.evaluate.imagefolder import ZeroShotConfig, zero_shot_folder
from nanovlm.evaluate.plots import embed_gallery
from nanovlm.evaluate.retrieval import gallery_texts, hard_negatives, retrieval, split_rows
from nanovlm.evaluate.retrieval import table as retrieval_table
from nanovlm.evaluate.zero_shot import world_attributes, zero_shot
from nanovlm.run import saved
from nanovlm.tasks.captioner import Captioner
from nanovlm.tasks.dual_encoder import DualEncoder


@dataclass
class EvalConfig:
    """Command-line keys of `python -m nanovlm.evaluate key=value ...`."""

    ckpt: str = "???"
    out: str | None = None  # where PNGs and metrics.json go; default: <run_dir>/eval next to checkpoints/
    query: str | None = None  # a caption -> its top_k images as a PNG grid
    image: str | None = None  # a gallery image index (0-242 for shapes) or a 32x32 image file -> its top_k captions
    question: str | None = None  # a VQA checkpoint: with image=, print the model's answer (nanovlm.evaluate.vqa)
    top_k: int = 5
    plots: bool = True  # the embedding pictures and zero-shot confusion matrices
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # zeroshot.root=DIR: classify an ImageFolder


def load_model(path: str | Path) -> tuple[DualEncoder, dict[str, Any]]:
    """The model a training checkpoint describes, with its weights and the tokenizer it read its texts with
    (`model.tokenizer`), and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ckpt: no checkpoint file at {str(path)!r}")
    checkpoint = saved.load_checkpoint(path, key="ckpt")
    config = saved.saved_config(checkpoint)
    if config is None:
        raise ValueError(f"ckpt: {str(path)!r} has no 'nanovlm' config entry; was it written by nanovlm's train.py?")
    from nanovlm.run.training import build_model

    model = build_model(OmegaConf.create(config), saved.saved_tokenizer(checkpoint))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"ckpt: the weights in {str(path)!r} do not fit the model its config describes: {err}"
        ) from err
    return model.eval(), config


def load_image(spec: str, datamodule: WorldDataModule) -> tuple[torch.Tensor, str]:
    """`image=` as an image index or an image file of data.image_size pixels -> ([3, S, S] in [0, 1], description)."""
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
    size = datamodule.image_size
    if picture.size != (size, size):
        raise ValueError(f"image: the file must be {size}x{size} pixels, got {picture.size[0]}x{picture.size[1]}")
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float().div(255), f"file {spec}"  # [3, H, W]


def world_embeddings(
    model: DualEncoder, datamodule: WorldDataModule, gallery: Gallery, image_emb: torch.Tensor, text_emb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [N, D], text [C, D]) embeddings of every image and caption of the dataset, on the CPU: the gallery's
    when it is the whole dataset; encoded otherwise, and only when something needs them (zero-shot, hard negatives)."""
    if len(gallery.image_index) == len(datamodule.images) and len(gallery.caption_index) == len(datamodule.tokens):
        return image_emb, text_emb
    if not datamodule.attributes() and not datamodule.negative_kinds:
        return image_emb[:0], text_emb[:0]
    with torch.no_grad():
        images = model.encode_images(datamodule.images).float().cpu()
    return images, embed_gallery(model, datamodule.images[:1], datamodule.tokens)[1]


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every evaluation `cfg` asks for, print a report, write metrics.json and PNGs to cfg.out."""
    model, train_cfg = load_model(cfg.ckpt)
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.ckpt).resolve().parent.parent / "eval"
    datamodule: WorldDataModule = instantiate(train_cfg["data"])
    if model.tokenizer.state() != datamodule.tokenizer.state():
        raise ValueError(f"ckpt: {cfg.ckpt!r} was trained with another tokenizer than its data gives now")
    if getattr(model, "task", None) == "vqa":  # answers, not rankings: nanovlm.evaluate.vqa
        from nanovlm.evaluate.vqa import evaluate_vqa

        return evaluate_vqa(model, datamodule, cfg, out_dir)
    if cfg.query is not None:  # fail before the work, not after it
        datamodule.tokenizer.encode(cfg.query)
    image = load_image(cfg.image, datamodule) if cfg.image is not None else None
    if model.text_encoder is None:  # loss=cap: no embeddings to compare; it is evaluated by what it writes and scores
        results = evaluate_captioner(model, datamodule, image, cfg.top_k)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps({"ckpt": str(cfg.ckpt), **results}, indent=2))
        print(f"written     {out_dir}/")
        return results
    gallery = datamodule.gallery()
    with torch.no_grad():
        image_emb = model.encode_images(gallery.images).float().cpu()
    _, text_emb = embed_gallery(model, gallery.images[:1], gallery.tokens)
    splits = split_rows(datamodule, gallery)
    names = {s: f"{s} ({len(idx)})" for s, idx in splits.items()}
    results: dict[str, Any] = {"ckpt": str(cfg.ckpt), "split": train_cfg["data"].get("split", "random")}
    results["retrieval"] = {s: retrieval(image_emb, text_emb, idx, gallery.truth.cpu()) for s, idx in splits.items()}
    # Zero-shot, hard negatives and the pictures are about the world's own captions and images: all of them, whatever
    # the gallery (the same tensors when the gallery is the whole world). A world without them skips them.
    world = world_embeddings(model, datamodule, gallery, image_emb, text_emb)
    _, triples, table = world_attributes(datamodule)
    zs: dict[str, Any] = {}
    if table:
        world_splits = {"val": datamodule.val_idx.cpu(), "all": torch.arange(len(world[0]))}
        zs = {s: zero_shot(*world, triples, i, datamodule.caption_of.cpu(), table) for s, i in world_splits.items()}
        results["zero_shot"] = {s: {a: r["accuracy"] for a, r in zs[s].items()} for s in zs}
    else:
        print("zero-shot   skipped: this dataset names no attributes of its captions")
    if datamodule.negative_kinds:
        results["hard_negatives"] = {
            s: hard_negatives(model, datamodule, *world, idx) for s, idx in world_splits.items()
        }

    gallery_words = f"all {len(image_emb)} images / {len(text_emb)} captions"
    if len(image_emb) == len(text_emb):
        gallery_words = f"all {len(image_emb)}"
    scope = "the whole world" if datamodule.gallery_choice == "world" else "the val split"
    print(f"checkpoint  {cfg.ckpt}  (data.split={results['split']}; queries ranked against {gallery_words}: {scope})")
    print(retrieval_table({names[s]: m for s, m in results["retrieval"].items()}))
    world_names = {"val": f"val ({len(datamodule.val_idx)})", "all": f"all ({len(datamodule.images)})"}
    for s, acc in results.get("zero_shot", {}).items():
        print(f"zero-shot {world_names[s]:10}" + "".join(f"  {a} {v:.3f}" for a, v in acc.items()))
    for s, acc in results.get("hard_negatives", {}).items():
        print(f"hard neg. {world_names[s]:10}" + "".join(f"  {kind} {v:.3f}" for kind, v in acc.items()))

    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.plots and table:
        from nanovlm.evaluate import plots

        first_image, _, _ = world_attributes(datamodule)
        pairs = (world[0][first_image], world[1])  # one image per caption
        pictures = plots.draw_embedding_pictures(out_dir, pairs, datamodule.captions, triples, table=table)
        for attribute, r in zs["all"].items():
            title = f"zero-shot {attribute}, all {len(world[0])} images: accuracy {r['accuracy']:.3f}"
            path = out_dir / f"zero_shot_{attribute.replace(' ', '_')}.png"
            pictures[f"zero_shot_{attribute}"] = plots.confusion_matrix(path, r["confusion"], table[attribute], title)
        results["pictures"] = {k: str(v) for k, v in pictures.items()}
    elif cfg.plots:
        print("pictures    skipped: they colour by caption attributes, which this dataset does not name")
    if cfg.query is not None:
        results["query"] = query_images(model, cfg.query, cfg.top_k, datamodule, gallery, image_emb, out_dir)
    if image is not None:
        results["image"] = image_captions(model, image, cfg.top_k, gallery_texts(datamodule, gallery), text_emb)
    if isinstance(model, Captioner):  # loss=coca: also the captions it writes
        results.update(evaluate_captioner(model, datamodule, image, cfg.top_k, scores=False))
    if cfg.zeroshot.root:
        results["zero_shot_folder"] = zero_shot_folder(model, cfg.zeroshot, datamodule.image_size)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"written     {out_dir}/")
    return results


@torch.no_grad()
def query_images(
    model: DualEncoder,
    text: str,
    k: int,
    datamodule: WorldDataModule,
    gallery: Gallery,
    image_emb: torch.Tensor,
    out_dir: Path,
) -> dict[str, Any]:
    """The top-k gallery images for a caption, printed and drawn as a PNG grid with their scores."""
    tokens = datamodule.tokenizer.encode(text)[None]  # [1, L]; unknown words raise a ValueError naming them
    scores = (model.text_encoder(tokens) @ image_emb.T)[0]  # [N]
    top = scores.topk(min(k, len(scores)))
    texts = gallery_texts(datamodule, gallery)
    captions = [texts[int(gallery.truth[i].float().argmax())] for i in top.indices.tolist()]
    print(f"query       {text!r} -> top {len(captions)} images")
    for rank, (c, s) in enumerate(zip(captions, top.values.tolist(), strict=True), 1):
        print(f"  {rank:2d}. {s:+.3f}  {c}")
    from nanovlm.evaluate.plots import image_grid

    path = out_dir / f"query_{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')}.png"
    titles = [f"{c}\n{s:+.3f}" for c, s in zip(captions, top.values.tolist(), strict=True)]
    image_grid(path, gallery.images[top.indices], titles, f"query: {text!r}")
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


def parse_args(argv: list[str]) -> EvalConfig:
    """`key=value` arguments (Hydra-style) onto EvalConfig; unknown keys and missing ckpt are errors."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        keys = "ckpt, out, query, image, question, top_k, plots, zeroshot.root, zeroshot.templates"
        raise ValueError(f"arguments are key=value (keys: {keys}), got {bad}")
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

"""Zero-shot classification of an ImageFolder, CLIP's way: a checkpoint that never saw the classes names them.

    python -m nanovlm.evaluate ckpt=... zeroshot.root=DIR 'zeroshot.templates=["a photo of a {}.","a {}"]'

DIR holds one folder per class (torchvision's ImageFolder layout: DIR/<class>/<image>); the class name is the
folder's name with `_` read as a space. Each class's text embedding is the renormalised mean of its prompts (every
template filled with the name, CLIP's prompt ensembling); each image is decoded and centre-cropped to the size the
checkpoint was trained at, embedded, and ranked against the classes. Top-1 and top-5 accuracy as open_clip reports
them, by the project's one ranking rule (nanovlm.evaluate.ranking: a tie with another class is a miss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nanovlm.data.images import BadImage, ImageTransform, open_rgb
from nanovlm.evaluate.ranking import true_item_rank

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ZeroShotConfig:
    """`zeroshot.*` keys of `python -m nanovlm.evaluate`."""

    root: str | None = None  # an ImageFolder: DIR/<class name>/<images>; None: no ImageFolder zero-shot
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # "{}" is the class name
    batch_size: int = 256


def read_folder(root: Path) -> tuple[list[str], list[Path], torch.Tensor]:
    """(class names, image files, the class of each) of an ImageFolder, classes in sorted folder order."""
    if not root.is_dir():
        raise ValueError(f"zeroshot.root: no such directory {str(root)!r} (one folder of images per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(f, c) for c, d in enumerate(folders) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(folders) < 2 or not files:
        raise ValueError(f"zeroshot.root: {root} needs at least 2 class folders with images, has {len(folders)}")
    names = [d.name.replace("_", " ") for d in folders]
    return names, [f for f, _ in files], torch.tensor([c for _, c in files])


@torch.no_grad()
def class_embeddings(model: Any, names: list[str], templates: list[str]) -> torch.Tensor:
    """[K, D]: per class, the renormalised mean embedding of its prompts."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f'zeroshot.templates: each template holds "{{}}" for the class name, got {templates!r}')
    prompts = [t.format(name) for name in names for t in templates]
    emb = model.text_encoder(model.tokenizer.encode_batch(prompts).to(model.device)).float()  # [K * T, D]
    return F.normalize(emb.view(len(names), len(templates), -1).mean(1), dim=-1)


@torch.no_grad()
def image_embeddings(model: Any, files: list[Path], size: int, batch_size: int) -> torch.Tensor:
    transform = ImageTransform(size)
    chunks = []
    for start in range(0, len(files), batch_size):
        images = []
        for path in files[start : start + batch_size]:
            try:
                images.append(transform(open_rgb(path)))
            except BadImage as error:
                raise ValueError(f"zeroshot.root: image {str(path)!r} is {error}") from None
        chunks.append(model.encode_images(torch.stack(images)).float().cpu())
    return torch.cat(chunks)


def zero_shot_folder(model: Any, cfg: ZeroShotConfig, image_size: int) -> dict[str, Any]:
    """Top-1 and top-5 accuracy of `model` on the ImageFolder at cfg.root (printed and returned)."""
    if model.text_encoder is None:
        print("zero-shot   skipped: a captioner without a text encoder (loss=cap) ranks no class prompts")
        return {}
    names, files, labels = read_folder(Path(cfg.root))
    classes = class_embeddings(model, names, cfg.templates)  # [K, D]
    scores = image_embeddings(model, files, image_size, cfg.batch_size) @ classes.T  # [N, K]
    rank = true_item_rank(scores, labels)  # [N]
    result = {
        "root": str(cfg.root),
        "classes": len(names),
        "images": len(files),
        "top1": float((rank <= 1).float().mean()),
        "top5": float((rank <= 5).float().mean()),
        "chance_top1": 1 / len(names),
    }
    print(
        f"zero-shot   {cfg.root}: {len(files)} images, {len(names)} classes: top-1 {result['top1']:.3f}, "
        f"top-5 {result['top5']:.3f} (chance {result['chance_top1']:.3f})"
    )
    return result

"""Pictures of an embedding space, and the callback that draws them during training.

Numbers say how well a model retrieves; pictures show what it learned: colour bands that line up
between the modalities, a block-diagonal similarity matrix, attribute clusters in a PCA scatter.
matplotlib is imported inside each function (Agg backend), so training pays for it only when a
picture is drawn: before fit, every `every_n_epochs` validation epochs if asked, and at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from nanovlm.data.shapes import ATTRIBUTE_VALUES, COLOURS
from nanovlm.evaluate.examples import retrieval_examples
from nanovlm.evaluate.figures import FigureJob, draw_side_by_side, pyplot, save_figure
from nanovlm.evaluate.retrieval import gallery_texts
from nanovlm.evaluate.zero_shot import AttributeValues, world_attributes


def _value_colours(values: Sequence[str]) -> list[tuple[float, float, float]]:
    """One plotting colour per value; colour names are drawn in their own colour."""
    if tuple(values) == tuple(COLOURS):
        return [tuple(c / 255 for c in rgb) for rgb in COLOURS.values()]
    cmap = pyplot().get_cmap("tab10")
    return [cmap(i)[:3] for i in range(len(values))]


def _value_ids(
    triples: Sequence[Sequence[str]], attribute: str, table: AttributeValues = ATTRIBUTE_VALUES
) -> list[int]:
    values = table[attribute]
    slot = list(table).index(attribute)
    return [values.index(t[slot]) for t in triples]


def embedding_bands(
    path: Path,
    after: tuple[torch.Tensor, torch.Tensor],
    before: tuple[torch.Tensor, torch.Tensor] | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Heatmaps of the embedding vectors, items x dims, images beside texts (before above after).

    Items are in the world's caption order, grouped by the caption's first word (a colour in both worlds), so an
    attribute the model encodes shows up as horizontal bands; after training the image and text bands of a pair
    should match.
    """
    plt = pyplot()
    stages = [("before training", before), ("after training", after)] if before is not None else [("", after)]
    height = 4.2 * len(stages)  # inches; the margins below are in inches too, so one row (evaluate) and two fit
    fig, axes = plt.subplots(len(stages), 2, figsize=(10, height), squeeze=False)
    fig.subplots_adjust(left=0.08, right=1.0, bottom=0.5 / height, top=1 - 0.3 / height, wspace=0.3, hspace=0.3)
    for row, (stage, (image_emb, text_emb)) in enumerate(stages):
        for col, (modality, emb) in enumerate((("image", image_emb), ("text", text_emb))):
            ax = axes[row, col]
            im = ax.imshow(
                emb.detach().cpu().numpy(), aspect="auto", cmap="RdBu_r", vmin=-0.6, vmax=0.6, interpolation="nearest"
            )
            ax.set_title(f"{modality} embeddings {stage}".strip())
            ax.set_xlabel("embedding dimension")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if captions is not None:  # name each first-word block (the colour) at its middle
                ax.set_yticks(*_block_ticks([c.split()[0] for c in captions]))
            if col == 0:
                ax.set_ylabel("item (caption order, blocks: its first word)")
    fig.colorbar(im, ax=axes, shrink=0.6, label="value (unit vectors)")
    return save_figure(fig, path, tight=False)


def _block_ticks(words: Sequence[str]) -> tuple[list[float], list[str]]:
    """Tick positions at the middle of each run of equal words, and the words."""
    blocks = {w: [i for i, x in enumerate(words) if x == w] for w in dict.fromkeys(words)}
    return [sum(ix) / len(ix) for ix in blocks.values()], list(blocks)


def similarity_matrix(path: Path, image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str]) -> Path:
    """Cosine similarity of every image (rows) with every caption (columns), both sorted by caption,
    so a trained model shows a bright diagonal inside blocks of shared colour."""
    plt = pyplot()
    order = sorted(range(len(captions)), key=lambda i: captions[i])
    sims = (image_emb[order] @ text_emb[order].T).detach().cpu().numpy()  # [N, N]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.15, top=0.95)
    im = ax.imshow(sims, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    positions, names = _block_ticks([captions[i].split()[0] for i in order])  # one tick per colour block
    ax.set_xticks(positions, names, rotation=90)
    ax.set_yticks(positions, names)
    ax.set_xlabel("captions, sorted")
    ax.set_ylabel("images, sorted by their caption")
    ax.set_title("image x text cosine similarity")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path, tight=False)


def pca_scatter(
    path: Path,
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    triples: Sequence[Sequence[str]],
    table: AttributeValues = ATTRIBUTE_VALUES,
) -> Path:
    """Both modalities projected on the top-2 principal components of their union, one panel per
    attribute, coloured by its value; a thin line joins each image to its caption."""
    plt = pyplot()
    from matplotlib.collections import LineCollection

    both = torch.cat([image_emb, text_emb]).detach().cpu().double()  # [2N, D]
    centred = both - both.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).numpy()  # [2N, 2]
    n = len(image_emb)
    img_xy, txt_xy = xy[:n], xy[n:]
    fig, axes = plt.subplots(1, len(table), figsize=(16 / 3 * len(table), 5.4))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.1, top=0.94, wspace=0.2)
    for ax, attribute in zip(axes, table, strict=True):
        palette, ids = _value_colours(table[attribute]), _value_ids(triples, attribute, table)
        colours = [palette[i] for i in ids]
        # One LineCollection, not 243 Line2D artists: the picture is the same, savefig is much faster.
        ax.add_collection(LineCollection(list(zip(img_xy, txt_xy, strict=True)), colors="0.8", lw=0.5, zorder=0))
        ax.scatter(img_xy[:, 0], img_xy[:, 1], c=colours, marker="o", s=22, edgecolors="k", linewidths=0.3)
        ax.scatter(txt_xy[:, 0], txt_xy[:, 1], c=colours, marker="^", s=40, edgecolors="k", linewidths=0.3)
        handles = [
            plt.Line2D([], [], ls="", marker="s", color=c, markeredgecolor="k", label=name)
            for name, c in zip(table[attribute], palette, strict=True)
        ]
        ax.legend(handles=handles, fontsize=7, loc="best", title=attribute, title_fontsize=8)
        ax.set_title(f"coloured by {attribute}  (o image, ^ text)")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_facecolor("0.93")
    return save_figure(fig, path, tight=False)


def sphere_scatter(
    path: Path,
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    triples: Sequence[Sequence[str]],
    table: AttributeValues = ATTRIBUTE_VALUES,
) -> Path:
    """3-D embeddings (model.embed_dim=3) on the unit sphere, coloured by the first attribute; lines join pairs."""
    if image_emb.shape[1] != 3:
        raise ValueError(f"sphere_scatter needs model.embed_dim=3, got embeddings of dim {image_emb.shape[1]}")
    plt = pyplot()
    img, txt = image_emb.detach().cpu().numpy(), text_emb.detach().cpu().numpy()
    first = next(iter(table))
    palette, ids = _value_colours(table[first]), _value_ids(triples, first, table)
    colours = [palette[i] for i in ids]
    fig = plt.figure(figsize=(7, 7))
    ax = fig.add_subplot(projection="3d")
    u, v = torch.meshgrid(torch.linspace(0, 2 * torch.pi, 30), torch.linspace(0, torch.pi, 15), indexing="ij")
    ax.plot_wireframe((u.cos() * v.sin()).numpy(), (u.sin() * v.sin()).numpy(), v.cos().numpy(), color="0.85", lw=0.4)
    for a, b in zip(img, txt, strict=True):
        ax.plot(*zip(a, b, strict=True), color="0.6", lw=0.5)
    ax.scatter(*img.T, c=colours, marker="o", s=20, edgecolors="k", linewidths=0.3, depthshade=False)
    ax.scatter(*txt.T, c=colours, marker="^", s=36, edgecolors="k", linewidths=0.3, depthshade=False)
    ax.set_box_aspect((1, 1, 1))
    ax.set_title(f"embeddings on the unit sphere, coloured by {first} (o image, ^ text)")
    return save_figure(fig, path)


def confusion_matrix(path: Path, counts: torch.Tensor, labels: Sequence[str], title: str) -> Path:
    """A confusion matrix: rows are true values, columns predicted, cells are counts."""
    plt = pyplot()
    counts = counts.cpu()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    ax.imshow(counts.numpy(), cmap="Blues")
    for i, row in enumerate(counts.tolist()):
        for j, c in enumerate(row):
            if c:
                ax.text(j, i, c, ha="center", va="center", color="white" if c > counts.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def image_grid(path: Path, images: torch.Tensor, titles: Sequence[str], suptitle: str) -> Path:
    """A row of images [K, 3, H, W] in [0, 1], each with its title (e.g. its caption and score)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.6), squeeze=False)
    for ax, image, title in zip(axes[0], images, titles, strict=True):
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")  # [H, W, 3]
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(suptitle)
    return save_figure(fig, path)


def draw_embedding_pictures(
    directory: Path,
    after: tuple[torch.Tensor, torch.Tensor],
    captions: Sequence[str],
    triples: Sequence[Sequence[str]],
    before: tuple[torch.Tensor, torch.Tensor] | None = None,
    table: AttributeValues = ATTRIBUTE_VALUES,
) -> dict[str, Path]:
    """Every embedding picture of one model state, as {name: PNG path} in `directory`. `after` (and `before`)
    are aligned (image, caption) pairs, one per caption; `triples` their attribute values in `table`'s order."""
    directory = Path(directory)
    image_emb, text_emb = after
    # The PCA first: it takes about as long as the other two together, and the first job is drawn beside them.
    jobs: dict[str, FigureJob] = {
        "pca": (directory / "pca.png", lambda p: pca_scatter(p, image_emb, text_emb, triples, table)),
        "bands": (directory / "bands.png", lambda p: embedding_bands(p, after, before, captions)),
        "similarity": (directory / "similarity.png", lambda p: similarity_matrix(p, image_emb, text_emb, captions)),
    }
    if image_emb.shape[1] == 3:
        jobs["sphere"] = (directory / "sphere.png", lambda p: sphere_scatter(p, image_emb, text_emb, triples, table))
    return dict(zip(jobs, draw_side_by_side(list(jobs.values())), strict=True))


def picture_pairs(datamodule: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(one image per caption, every caption's tokens), aligned (see world_attributes)."""
    first_image, _, _ = world_attributes(datamodule)
    return datamodule.images[first_image.to(datamodule.images.device)], datamodule.tokens


@torch.no_grad()
def embed_gallery(
    model: L.LightningModule, images: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [N, D], text [C, D]) embeddings of `images` and `tokens`, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    image_emb, text_emb = model(images.to(model.device), tokens.to(model.device))
    model.train(was_training)
    return image_emb.float().cpu(), text_emb.float().cpu()


class EmbeddingPlots(L.Callback):
    """Draws the embedding pictures into `<run_dir>/plots/` and logs them to W&B as images.

    The "before" embeddings are taken once at fit start; the pictures are drawn at fit end, and
    also every `every_n_epochs` validation epochs when that is > 0 (into plots/epoch_<n>/).
    """

    def __init__(self, every_n_epochs: int = 0, dirname: str = "plots") -> None:
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError(f"plots.every_n_epochs must be >= 0 (0: only at the end), got {every_n_epochs}")
        self.every_n_epochs, self.dirname = every_n_epochs, dirname
        self.before: tuple[torch.Tensor, torch.Tensor] | None = None
        self.paths: dict[str, Path] = {}

    def _draw(self, trainer: L.Trainer, model: L.LightningModule, subdir: str = "") -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        directory = Path(trainer.default_root_dir) / self.dirname / subdir
        if self.before is None:  # nothing to colour by (on_fit_start said so): what every dataset has, its gallery
            gallery = datamodule.gallery()
            captions = gallery_texts(datamodule, gallery)
            self.paths = {"retrieval": retrieval_examples(directory / "retrieval.png", model, gallery, captions)}
        else:
            _, triples, table = world_attributes(datamodule)
            after = embed_gallery(model, *picture_pairs(datamodule))
            self.paths = draw_embedding_pictures(directory, after, datamodule.captions, triples, self.before, table)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "log_image"):
            for name, path in self.paths.items():
                logger.log_image(key=f"plots/{name}", images=[str(path)], step=trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.datamodule.attributes():  # the pictures colour every point by a caption attribute
            rank_zero_info(
                "plots: this dataset names no caption attributes to colour the embeddings by: drawing retrieval "
                "examples instead (plots/retrieval.png)"
            )
            return
        self.before = embed_gallery(pl_module, *picture_pairs(trainer.datamodule))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and not last and not trainer.sanity_checking:
            self._draw(trainer, pl_module, f"epoch_{epoch:03d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module)

"""What every dataset hands the model: the batch, the gallery, and `WorldDataModule`, the base each world fills in.

The batch (every datamodule's loaders yield it; docs/data.md draws it):

- "image" [B, 3, S, S] float in [0, 1], S = data.image_size;
- "tokens" [B, L] long, the caption as its tokenizer encodes it (BOS first, right-padded with `tokenizer.pad_id`;
  the padding mask is `tokens != pad_id`, see nanovlm.data.tokenizer);
- "caption_id" [B] long: equal ids are the same caption text, so the losses count every such pair as true;
- "index" [B] long: the image's id in the dataset (what the gallery's rows are keyed by);
- optionally "negatives" [B, K, L], "negative_valid" [B, K] bool, "negative_id" [B, K] (the caption each negative
  spells, -1 if none): generated hard negatives, for a world that has them (`negative_kinds`).

A dataset with several captions per image serves each image once per epoch with one of them, so an image is never
two rows of one batch. What validation ranks against is a `Gallery`.

A synthetic world (nanovlm.data.shapes, nanovlm.data.scenes) is generated in memory at start-up and served as
tensor slices: a model this small is slowed down more by per-item collation and worker processes than by anything
it computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from nanovlm.data.tokenizer import TextTokenizer, Tokenizer
from nanovlm.run.config import check_value

GALLERIES = ("world", "val")


@dataclass(frozen=True)
class Gallery:
    """What retrieval ranks against: images, distinct captions, and which of them belong together.

    images [N, 3, S, S]; tokens [C, L]; truth [N, C] bool, image n shows caption c (a scenes caption is shown by
    9 images, a COCO image has 5 captions: true items in both directions); image_index [N] the batch "index" of
    each row; caption_index [C] the batch "caption_id" of each column. Image->text ranks a query image's row
    against all C captions, text->image a caption's column against all N images, every true item counting.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    truth: torch.Tensor
    image_index: torch.Tensor
    caption_index: torch.Tensor

    def __post_init__(self) -> None:
        # Built once: validation asks for the rows of every batch.
        object.__setattr__(self, "_row_of", _lookup(self.image_index))
        object.__setattr__(self, "_column_of", _lookup(self.caption_index))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Gallery rows of images with batch ids `index` [B] (each must be in the gallery)."""
        return _positions(self._row_of, index, "image")

    def columns(self, caption_id: torch.Tensor) -> torch.Tensor:
        """Gallery columns of captions with batch ids `caption_id` [B]."""
        return _positions(self._column_of, caption_id, "caption")

    def captions_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The columns true for any of the images at `rows`, each once: the text->image queries they ask."""
        return torch.nonzero(self.truth[rows].any(dim=0)).flatten()


def _lookup(keys: torch.Tensor) -> torch.Tensor | None:
    """Position of each id in `keys` (-1 where absent), or None where the ids are the positions (the whole world)."""
    if bool((keys == torch.arange(len(keys), device=keys.device)).all()):
        return None
    lookup = torch.full((int(keys.max()) + 1,), -1, dtype=torch.long, device=keys.device)
    lookup[keys] = torch.arange(len(keys), device=keys.device)
    return lookup


def _positions(lookup: torch.Tensor | None, wanted: torch.Tensor, what: str) -> torch.Tensor:
    if lookup is None:
        return wanted
    found = lookup[wanted.clamp(max=len(lookup) - 1)].where(wanted < len(lookup), -1)
    if bool((found < 0).any()):
        raise ValueError(f"a batch {what} is not in the gallery (data.gallery=val ranks val images only)")
    return found


class TensorSliceDataset(Dataset):
    """A view of some images of a world's in-memory tensors. `__getitems__` lets the DataLoader fetch a
    whole batch with a few indexing ops instead of collating items one by one.

    Image i's caption is `caption_of[i]` (a world may show one caption in several images); `caption_extras`
    are further per-caption tensors served beside it (a world's hard negatives), indexed the same way.
    """

    def __init__(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        indices: torch.Tensor,
        caption_of: torch.Tensor | None = None,
        caption_extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.images, self.tokens, self.indices = images, tokens, indices
        self.caption_of = torch.arange(len(images), device=images.device) if caption_of is None else caption_of
        self.caption_extras = caption_extras or {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        index = self.indices[positions]
        caption = self.caption_of[index]
        batch = {"image": self.images[index], "tokens": self.tokens[caption], "caption_id": caption, "index": index}
        batch.update({name: values[caption] for name, values in self.caption_extras.items()})
        return batch


def _keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn for batches that `__getitems__` already built."""
    return batch


class WorldDataModule(L.LightningDataModule):
    """What every world shares: in-memory tensors served as slices, a train/val split of the images, the
    gallery validation ranks against, the world's tokenizer. A world subclass fills in, in its __init__:

    - `images` [N, 3, H, W] float in [0, 1]; `tokens` [C, L] the token ids of its C distinct captions, whose
      texts are `captions`; `caption_of` [N] the caption of each image (C = N and identity for shapes);
    - `train_idx`, `val_idx`: image indices;
    - optionally `caption_extras` ({"negatives": [C, K, L], "negative_valid": [C, K], "negative_id": [C, K] the
      caption each negative spells, -1 if none} for a world with hard negatives of the kinds `negative_kinds`),
      served in every batch beside the tokens.

    A batch is {"image", "tokens", "caption_id" (the caption of each image: equal ids are the same caption, so
    the losses count every such pair as true), "index" (the image), and the caption extras}.

    Class attributes `vocab`, `seq_len` and `caption_form` describe its captions and make its `tokenizer`; the
    model takes its vocabulary size, caption length and padding id from that tokenizer (training.build_model), so no
    code names a world. The world is drawn at 32 px; `image_size` resizes it once (bilinear, antialiased).
    `gallery` picks what validation ranks against: "world" (every image and caption, the default: a val-only
    gallery of 49 seed-world pairs would make the task easier than it is) or "val" (the val split only, the
    protocol of real datasets).
    """

    vocab: tuple[str, ...] = ()
    seq_len: int = 0
    caption_form: str = ""
    negative_kinds: tuple[str, ...] = ()

    images: torch.Tensor
    tokens: torch.Tensor
    captions: list[str]
    caption_of: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor

    def __init__(self, batch_size: int, image_size: int = 32, gallery: str = "world") -> None:
        super().__init__()
        check_value("data.batch_size", batch_size)  # the ranges live in nanovlm.run.config.RULES
        if image_size < 8:
            raise ValueError(f"data.image_size must be >= 8 pixels, got {image_size}")
        if gallery not in GALLERIES:
            raise ValueError(f"data.gallery must be one of {', '.join(GALLERIES)}, got {gallery!r}")
        self.batch_size, self.image_size, self.gallery_choice = batch_size, image_size, gallery
        self.caption_extras: dict[str, torch.Tensor] = {}
        self.tokenizer: TextTokenizer = self.world_tokenizer()

    @classmethod
    def world_tokenizer(cls) -> Tokenizer:
        """The closed word tokenizer of the world's vocabulary (what `tokenizer` is for every synthetic world)."""
        return Tokenizer(cls.vocab, cls.seq_len, cls.caption_form)

    def sized(self, images: torch.Tensor) -> torch.Tensor:
        """`images` [N, 3, H, W] at `image_size` (unchanged when they already are)."""
        if images.shape[-1] == self.image_size:
            return images
        size = (self.image_size, self.image_size)
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    def setup(self, stage: str) -> None:
        """Move the whole dataset to the training device once: batches are then slices of device tensors,
        with no per-step host-to-device copy."""
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.images, self.tokens, self.caption_of = (
                t.to(device) for t in (self.images, self.tokens, self.caption_of)
            )
            self.train_idx, self.val_idx = self.train_idx.to(device), self.val_idx.to(device)
            self.caption_extras = {k: v.to(device) for k, v in self.caption_extras.items()}

    @property
    def repeats_captions(self) -> bool:
        """Whether some caption is shown by several images (data=scenes: 9 each), so that a batch can hold several
        true pairs. Where none is (the seed world), the losses need no caption ids and stay open_clip's, bit for
        bit."""
        return len(torch.unique(self.caption_of)) < len(self.caption_of)

    def gallery(self) -> Gallery:
        """What retrieval ranks against (`data.gallery`): every image and distinct caption of the world, or the val
        images and the captions they show."""
        device = self.images.device
        if self.gallery_choice == "world":
            image_index = torch.arange(len(self.images), device=device)
            caption_index = torch.arange(len(self.tokens), device=device)
        else:
            image_index = self.val_idx.sort().values
            caption_index = torch.unique(self.caption_of[image_index])
        truth = self.caption_of[image_index][:, None] == caption_index[None, :]  # [N, C]
        return Gallery(self.images[image_index], self.tokens[caption_index], truth, image_index, caption_index)

    def attributes(self) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """{attribute: (its values, the value id of each caption [C])}: what zero-shot classification and the
        pictures colour by. Empty for a world without such attributes: both are then skipped with one line."""
        return {}

    def hard_negatives(self, index: int) -> dict[str, torch.Tensor]:
        """Image `index`'s generated negative captions as token ids, by kind; a kind that would equal the truth
        is left out. Empty for a world without negatives."""
        if not self.negative_kinds:
            return {}
        caption = int(self.caption_of[index])
        negatives, valid = self.caption_extras["negatives"][caption], self.caption_extras["negative_valid"][caption]
        return {kind: negatives[k] for k, kind in enumerate(self.negative_kinds) if valid[k]}

    def _dataset(self, indices: torch.Tensor) -> TensorSliceDataset:
        return TensorSliceDataset(self.images, self.tokens, indices, self.caption_of, self.caption_extras)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_idx)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, collate_fn=_keep_batch)

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.val_idx)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=_keep_batch)

"""What every world hands the model: the batch contract, and `WorldDataModule`, the base each world fills in.

A world (nanovlm.data.shapes, nanovlm.data.scenes) is generated in memory at start-up and served as tensor slices:
a model this small is slowed down more by per-item collation and worker processes than by anything it computes.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from nanovlm.data.tokenizer import Tokenizer
from nanovlm.run.config import check_value


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

    Class attributes `vocab`, `seq_len` and `caption_form` describe its captions; the model's text encoder takes
    its vocabulary size and caption length from them (training.build_model), so no code names a world.
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

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        check_value("data.batch_size", batch_size)  # the ranges live in nanovlm.run.config.RULES
        self.batch_size = batch_size
        self.caption_extras: dict[str, torch.Tensor] = {}

    @classmethod
    def tokenizer(cls) -> Tokenizer:
        return Tokenizer(cls.vocab, cls.seq_len, cls.caption_form)

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

    def gallery(self) -> dict[str, torch.Tensor]:
        """What retrieval ranks against: every image and every distinct caption of the world (not only val's).

        "image" [N, ...], "tokens" [C, L], "caption" [N] (the true gallery caption of each image), "index" [N].
        """
        index = torch.arange(len(self.images), device=self.images.device)
        return {"image": self.images, "tokens": self.tokens, "caption": self.caption_of, "index": index}

    def attributes(self) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """{attribute: (its values, the value id of each gallery caption [C])}: what zero-shot classification
        and the pictures colour by."""
        raise NotImplementedError

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

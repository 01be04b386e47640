"""The worlds nanovlm trains on, and what every world hands the model.

- `datamodule`: the batch contract and `WorldDataModule`, the base every world fills in;
- `tokenizer`: the closed word-level tokenizer a world builds over its vocabulary;
- `shapes`: the seed world, one coloured shape in a 3x3 grid (243 pairs); also what the other worlds draw with;
- `scenes`: two objects and a relation, with hard negatives (12,636 images);
- pairs from disk (docs/data.md): `files` (data=csv), `coco` (data=coco), `shards` (data=wds), on `disk` (the
  DataModule they share) and `pairs` (split by image, caption table); `index` reads and checks what each lists
  without torch (train.py does it first); `images` decodes and crops, `subword` is their BPE / WordPiece tokenizer.

Nothing is imported here: `nanovlm.data.tokenizer` must not pay for Lightning.
"""

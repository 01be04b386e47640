import pytest
import torch

from nanovlm.data.shapes import (
    BACKGROUND,
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    VOCAB,
    ShapesDataModule,
    all_triples,
    build_tensors,
    cell_box,
    render,
)


def test_all_243_pairs_are_unique() -> None:
    images, tokens, captions = build_tensors()
    assert images.shape == (243, 3, IMAGE_SIZE, IMAGE_SIZE) and tokens.shape == (243, 4)
    assert len(set(captions)) == 243
    assert len({tuple(t.tolist()) for t in tokens}) == 243
    assert len({img.numpy().tobytes() for img in images}) == 243
    assert (len(COLOURS), len(SHAPES), len(POSITIONS)) == (9, 3, 9)
    assert {"red", "green", "blue", "yellow", "pink", "brown"} <= set(COLOURS)


def _painted(colour: str, shape: str, position: str) -> torch.Tensor:
    """[32, 32] bool mask of the non-background pixels of one rendered image."""
    pixels = torch.tensor(list(render(colour, shape, position).getdata())).view(IMAGE_SIZE, IMAGE_SIZE, 3)
    return (pixels != torch.tensor(BACKGROUND)).any(-1), pixels


def test_every_image_shows_its_caption() -> None:
    """All 243 renders, one test: a failure names the first caption whose picture is wrong."""
    for colour, shape, position in all_triples():
        caption = f"{colour} {shape} {position}"
        mask, pixels = _painted(colour, shape, position)
        x0, y0, x1, y1 = cell_box(position)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # Every painted pixel has the caption's colour (no anti-aliasing blends) ...
        assert (pixels[mask] == torch.tensor(COLOURS[colour])).all(), caption
        # ... and lies inside the named cell's box, which keeps a margin from the image border.
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1, caption
        assert x0 >= 1 and y0 >= 1 and x1 <= IMAGE_SIZE - 2 and y1 <= IMAGE_SIZE - 2, caption
        # The named cell: row from the top, column from the left.
        row, col = divmod(POSITIONS.index(position), 3)
        centre_x, centre_y = xs.float().mean().item(), ys.float().mean().item()
        assert int(centre_x * 3 // IMAGE_SIZE) == col and int(centre_y * 3 // IMAGE_SIZE) == row, caption


def test_shapes_have_their_geometry() -> None:
    x0, y0, x1, y1 = cell_box("centre")
    square, _ = _painted("red", "square", "centre")
    circle, _ = _painted("red", "circle", "centre")
    triangle, _ = _painted("red", "triangle", "centre")
    box = square[y0 : y1 + 1, x0 : x1 + 1]
    assert box.all()  # a square fills its box
    assert not circle[y0, x0] and not circle[y1, x1] and circle[(y0 + y1) // 2, (x0 + x1) // 2]  # corners empty
    assert not triangle[y0, x0] and not triangle[y0, x1] and triangle[y1, x0 : x1 + 1].all()  # apex up, flat base
    assert triangle.sum() < circle.sum() < square.sum()


def test_render_rejects_unknown_attribute() -> None:
    with pytest.raises(ValueError, match=r"unknown colour 'teal'.*allowed: red"):
        render("teal", "circle", "top")


def test_tokenizer_round_trip_and_unknown_word() -> None:
    tok = ShapesDataModule.world_tokenizer()
    assert len(tok) == len(VOCAB) == 1 + 9 + 3 + 9
    for text in ("pink circle top", "green square bottom-right"):
        ids = tok.encode(text)
        assert ids.tolist()[0] == VOCAB.index("[CLS]") and len(ids) == 4
        assert tok.decode(ids) == text
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['elephant'\].*vocabulary is: red"):
        tok.encode("yellow elephant top")
    with pytest.raises(ValueError, match="3 words"):
        tok.encode("red circle")


def test_split_is_disjoint_complete_and_seeded() -> None:
    train, val = ShapesDataModule.split(243, 0.2, seed=0)
    assert (len(train), len(val)) == (194, 49)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(243))
    again_train, again_val = ShapesDataModule.split(243, 0.2, seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, ShapesDataModule.split(243, 0.2, seed=1)[1])


def test_dataloaders_serve_tensor_batches_of_the_right_items() -> None:
    dm = ShapesDataModule(batch_size=32, val_fraction=0.2, split_seed=3)
    seen = []
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["tokens"].shape[1:] == (4,)
        assert torch.equal(batch["image"], dm.images[batch["index"]])
        assert torch.equal(batch["tokens"], dm.tokens[batch["index"]])
        seen += batch["index"].tolist()
    assert sorted(seen) == dm.train_idx.tolist()
    val_seen = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert val_seen.tolist() == dm.val_idx.tolist()
    assert len(dm.gallery().images) == 243


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"val_fraction": 1.0}, r"data.val_fraction must be a number in \(0, 1\)"),
    ({"batch_size": 1}, "data.batch_size must be an integer >= 2"),
])  # fmt: skip
def test_datamodule_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapesDataModule(**kwargs)


HOLDOUTS = [["yellow triangle", "blue circle"], ["red square"], ["white circle", "white square"]]


@pytest.mark.parametrize("holdout", HOLDOUTS)
def test_compositional_split_holds_out_exactly_the_chosen_combos(holdout: list[str]) -> None:
    dm = ShapesDataModule(split="compositional", holdout=holdout)
    chosen = {tuple(h.split()) for h in holdout}
    triples = all_triples()
    val = {triples[i] for i in dm.val_idx.tolist()}
    train = {triples[i] for i in dm.train_idx.tolist()}
    # val is every position of every chosen combo, and nothing else; train is everything else.
    assert val == {(c, s, p) for c, s in chosen for p in POSITIONS}
    assert len(val) == 9 * len(chosen) and train.isdisjoint(val) and len(train) + len(val) == 243
    assert not any((c, s) in chosen for c, s, _ in train)
    # Each held-out colour and shape is still trained on, just never together.
    assert {c for c, _ in chosen} <= {c for c, _, _ in train} and {s for _, s in chosen} <= {s for _, s, _ in train}
    served = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert {triples[i] for i in served.tolist()} == val


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"split": "stratified"}, "data.split must be one of random, compositional, got 'stratified'"),
    ({"split": "compositional", "holdout": ["teal circle"]}, r"data.holdout entries are .*got 'teal circle'"),
    ({"split": "compositional", "holdout": ["red"]}, r"data.holdout entries are .*got 'red'"),
    ({"split": "compositional", "holdout": []}, "data.holdout must be a non-empty list"),
    ({"split": "compositional", "holdout": [f"red {s}" for s in SHAPES]}, "every shape of 'red'"),
    ({"split": "compositional", "holdout": [f"{c} circle" for c in COLOURS]}, "every colour of 'circle'"),
])  # fmt: skip
def test_compositional_split_rejects_bad_holdouts(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapesDataModule(**kwargs)

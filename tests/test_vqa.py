"""The question world, the fusion designs and the VQA task, against hand-built cases.

The answers are checked by a second, independent reading: the scene is decoded back from the pixels (colour of
each cell's centre, shape from which corners of its box are filled) and the question is parsed from its text by
regular expressions, then answered here without nanovlm.data.questions.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest
import torch
from torch import nn

from nanovlm.data.images import to_tensor
from nanovlm.data.questions import ANSWERS, FAMILIES, FAMILY_ANSWERS, all_questions
from nanovlm.data.shapes import COLOURS, POSITIONS, SHAPES, cell_box, render
from nanovlm.data.tokenizer import tokenizer_from_state
from nanovlm.data.vqa import MAX_LEN, QuestionTokenizer, VQADataModule, cogent_combos
from nanovlm.fusion.blind import BlindFusion
from nanovlm.fusion.cross import CrossFusion
from nanovlm.fusion.early import EarlyFusion, prefix_lm_mask
from nanovlm.fusion.film import FiLMBlock, FiLMFusion
from nanovlm.fusion.late import LateFusion
from nanovlm.fusion.pairs import PairsFusion, grid_coordinates
from nanovlm.fusion.sizes import FusionSizes
from nanovlm.models.state import SceneStateEncoder
from nanovlm.models.text import AttentionTextEncoder


@pytest.fixture(scope="module")
def world() -> VQADataModule:
    return VQADataModule(n_questions=1200, val_fraction=0.25)


# --- An independent reading of pictures and questions -------------------------------------------------------------


def decode_scene(image: torch.Tensor) -> list[tuple[str, str, int]]:
    """(colour, shape, cell) of every object drawn in a [3, 32, 32] uint8 image."""
    palette = {name: torch.tensor(rgb) for name, rgb in COLOURS.items()}
    objects = []
    for cell, position in enumerate(POSITIONS):
        x0, y0, x1, y1 = cell_box(position)
        centre = image[:, (y0 + y1) // 2, (x0 + x1) // 2].int()
        if centre.sum() == 0:
            continue
        colour = min(palette, key=lambda c: int((palette[c] - centre).abs().sum()))
        top_left, bottom_left = image[:, y0, x0].sum() > 0, image[:, y1, x0].sum() > 0
        shape = "square" if top_left else "triangle" if bottom_left else "circle"
        objects.append((colour, shape, cell))
    return objects


def stands(relation: str, a: int, b: int) -> bool:
    (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def the(scene, colour=None, shape=None, relation=None, anchor=None):
    """The one object matching the description, or None if none or several do."""
    found = [o for o in scene if colour in (None, o[0]) and shape in (None, o[1])]
    if relation is not None:
        a = the(scene, *anchor)
        found = [] if a is None else [o for o in found if o != a and stands(relation, o[2], a[2])]
    return found[0] if len(found) == 1 else None


REL = "(left of|right of|above|below)"


def answer_from_text(scene, text: str) -> str | None:
    """The answer to the question `text`, read by regular expressions; None if it names no unique object."""

    def count(word: str) -> int:
        m = re.fullmatch(r"(\w+) things", word)
        return sum(o[0] == m.group(1) for o in scene) if m else sum(o[1] + "s" == word for o in scene)

    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", text):
        return "yes" if any(o[:2] == m.groups() for o in scene) else "no"
    if m := re.fullmatch(r"how many (\w+(?: things)?) are there\?", text):
        return str(count(m.group(1)))
    if m := re.fullmatch(r"are there more (\w+(?: things)?) than (\w+(?: things)?)\?", text):
        return "yes" if count(m.group(1)) > count(m.group(2)) else "no"
    if m := re.fullmatch(rf"is the (\w+) (\w+) {REL} the (\w+) (\w+)\?", text):
        a, b = the(scene, m.group(1), m.group(2)), the(scene, m.group(4), m.group(5))
        return None if a is None or b is None else ("yes" if stands(m.group(3), a[2], b[2]) else "no")
    if m := re.fullmatch(rf"what (colour|shape) is the (\w+)(?: thing)?(?: {REL} the (\w+) (\w+))?\?", text):
        asked, key, relation, c2, s2 = m.groups()
        described = {"shape": key} if asked == "colour" else {"colour": key}
        o = the(scene, **described, relation=relation, anchor=(c2, s2)) if relation else the(scene, **described)
        return None if o is None else (o[0] if asked == "colour" else o[1])
    raise AssertionError(f"a question no family writes: {text!r}")


# --- The world ----------------------------------------------------------------------------------------------------


def test_every_answer_is_the_scenes_read_from_its_pixels(world):
    for i in range(len(world.texts)):
        scene = decode_scene(world.pixels[i])
        assert sorted(scene) == sorted(world.scenes[i]), f"item {i}: the picture is not the scene"
        assert answer_from_text(scene, world.texts[i]) == world.answers[i], f"item {i}: {world.texts[i]}"


def test_scenes_hold_one_to_four_objects_in_distinct_cells(world):
    sizes = Counter(len(s) for s in world.scenes)
    assert set(sizes) == {1, 2, 3, 4}
    assert all(len({o[2] for o in s}) == len(s) for s in world.scenes)


@pytest.mark.parametrize("part", ["train_idx", "val_idx"])
def test_answers_are_balanced_within_each_family(world, part):
    index = getattr(world, part).tolist()
    per_family = defaultdict(Counter)
    for i in index:
        per_family[world.questions[i].family][world.answers[i]] += 1
    assert set(per_family) == set(FAMILIES)
    for family, counts in per_family.items():
        assert set(counts) == set(FAMILY_ANSWERS[family]), family
        assert max(counts.values()) - min(counts.values()) <= 1, (family, counts)


def test_cogent_conditions_are_disjoint_and_cover_every_word():
    a, b = set(cogent_combos("A")), set(cogent_combos("B"))
    assert not a & b and len(a | b) == len(COLOURS) * len(SHAPES)
    for combos in (a, b):
        assert {c for c, _ in combos} == set(COLOURS) and {s for _, s in combos} == set(SHAPES)
    world = VQADataModule(split="cogent", n_questions=600, val_fraction=0.2)
    for i in world.train_idx.tolist():
        assert {o[:2] for o in world.scenes[i]} <= a
    for i in world.val_idx.tolist():
        assert {o[:2] for o in world.scenes[i]} <= (b if int(world.condition[i]) == 1 else a)
    assert int((world.condition[world.val_idx] == 1).sum()) == 120 == int((world.condition[world.val_idx] == 0).sum())


def test_question_tokenizer_pads_ends_and_round_trips():
    tok = QuestionTokenizer()
    ids = tok.encode("is there a red circle?")
    words = ["is", "there", "a", "red", "circle", "?"]
    assert ids.tolist() == [tok.bos_id, *(tok.ids[w] for w in words), tok.eos_id] + [tok.pad_id] * (MAX_LEN - 8)
    assert tok.decode(ids) == "is there a red circle?"
    assert tokenizer_from_state(tok.state()).state() == tok.state()
    with pytest.raises(ValueError, match=r"unknown word.*'hexagon'.*the vocabulary is"):
        tok.encode("is there a red hexagon?")


def test_bad_split_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"data.split must be one of random, cogent, got 'clevr'"):
        VQADataModule(split="clevr", n_questions=60)


def test_families_asks_only_those_and_keeps_them_balanced():
    world = VQADataModule(n_questions=80, val_fraction=0.25, families=["relation", "count"])
    asked = Counter(q.family for q in world.questions)
    assert asked == {"relation": 40, "count": 40}
    assert Counter(a for q, a in zip(world.questions, world.answers, strict=True) if q.family == "count") == {
        n: 8 for n in FAMILY_ANSWERS["count"]
    }  # 30 train + 10 val count questions: 6 + 2 of each answer
    with pytest.raises(ValueError, match=r"^data.families must be distinct families of: exist, count, .*'colour'"):
        VQADataModule(n_questions=60, families=["colour"])


def test_relations_asks_only_those_spatial_words_and_keeps_answers_true():
    families = ["relation", "query_colour", "query_shape"]
    world = VQADataModule(n_questions=240, val_fraction=0.25, families=families, relations=["left of"])
    spatial = Counter()
    for i, (q, a) in enumerate(zip(world.questions, world.answers, strict=True)):
        spatial.update(word for word in ("left", "right", "above", "below") if word in q.text.split())
        assert answer_from_text(decode_scene(world.pixels[i]), q.text) == a, q.text
    assert set(spatial) == {"left"} and spatial["left"] > 80  # the 80 relation questions and the queries' clauses
    with pytest.raises(ValueError, match=r"^data.relations must be distinct words of: left of, right of, above"):
        VQADataModule(n_questions=60, relations=["near"])


# --- The fusion designs -------------------------------------------------------------------------------------------


def test_prefix_lm_mask_prefix_sees_itself_answers_see_what_precedes_them():
    blocked = prefix_lm_mask(3, 6)  # 3 prefix positions (image + question), 3 answer positions
    allowed = [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert (~blocked).int().tolist() == allowed


TOK = QuestionTokenizer()
ANSWER_IDS = [TOK.ids[a] for a in ANSWERS]


def questions(*texts: str, length: int = MAX_LEN) -> torch.Tensor:
    tokens = TOK.encode_batch(texts)
    return torch.cat([tokens, torch.full((len(texts), length - MAX_LEN), TOK.pad_id)], dim=1)


def image_inputs(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, generator=g), torch.randn(b, 16, 12, generator=g)  # emb [B, D], tokens [B, N, C]


def fusion_sizes(max_len: int) -> FusionSizes:
    return FusionSizes(vocab_size=TOK.vocab_size, answer_ids=tuple(ANSWER_IDS), max_len=max_len, pad_id=TOK.pad_id,
                       eos_id=TOK.eos_id, embed_dim=8, token_dim=12, num_tokens=16)  # fmt: skip


def question_encoder(max_len: int) -> AttentionTextEncoder:
    return AttentionTextEncoder(TOK.vocab_size, 8, width=16, heads=2, max_len=max_len, pad_id=TOK.pad_id)


def make(design: str, max_len: int = MAX_LEN + 4, max_answer_len: int = 3):
    torch.manual_seed(0)
    sizes, text = fusion_sizes(max_len), question_encoder(max_len)
    blocks = dict(width=16, depth=1, heads=2)
    return {
        "early": lambda: EarlyFusion(sizes, **blocks, max_answer_len=max_answer_len),
        "cross": lambda: CrossFusion(sizes, **blocks),
        "late": lambda: LateFusion(sizes, text, hidden=16),
        "blind": lambda: BlindFusion(sizes, text, hidden=16),
        "pairs": lambda: PairsFusion(sizes, text, width=16, hidden=16),
        "film": lambda: read_question(FiLMFusion(sizes, text, width=16, blocks=2, hidden=16)),
    }[design]().eval()


def read_question(fusion: FiLMFusion) -> FiLMFusion:
    """FiLM's question layer starts at zero (the unconditioned network); random weights make it read the question."""
    nn.init.normal_(fusion.film.weight, std=0.5)
    return fusion


@pytest.mark.parametrize("design", ["early", "cross", "late", "blind", "pairs", "film"])
def test_each_design_answers_and_ignores_padding(design):
    fusion = make(design)
    emb, grid = image_inputs()
    q = ("how many circles are there?", "what colour is the circle left of the blue square?")
    logits = fusion(emb, grid, questions(*q))
    assert logits.shape == (2, len(ANSWERS)) and torch.isfinite(logits).all()
    longer = fusion(emb, grid, questions(*q, length=MAX_LEN + 3))  # more padding: the same answers
    torch.testing.assert_close(longer, logits)
    swapped = fusion(emb.flip(0), grid.flip(0), questions(*q))
    reads_image = not torch.allclose(swapped[0], logits[0])
    assert reads_image == (design != "blind")
    other_question = fusion(emb, grid, questions(*q[::-1]))
    assert not torch.allclose(other_question[0], logits[0])  # every design reads the question


def test_early_fusion_prefix_sees_the_whole_question_and_answers_only_the_past():
    fusion = make("early")
    emb, grid = image_inputs(1)
    q = questions("is there a red circle?")
    answers = torch.tensor([[TOK.eos_id, TOK.ids["yes"], TOK.ids["no"]]])
    base = fusion.sequence_logits(emb, grid, q, answers)
    later = answers.clone()
    later[0, 2] = TOK.ids["red"]  # a later answer token changes no earlier answer position
    torch.testing.assert_close(fusion.sequence_logits(emb, grid, q, later)[:, :2], base[:, :2])
    other = questions("is there a red square?")  # the last question word reaches the first answer position
    assert not torch.allclose(fusion.sequence_logits(emb, grid, other, answers)[:, 0], base[:, 0])


def test_cross_fusion_reads_the_answer_at_eos_blind_to_what_follows():
    fusion = make("cross")
    emb, grid = image_inputs(1)
    q = questions("how many circles are there?")
    garbage = q.clone()
    garbage[0, 9:] = TOK.ids["red"]  # after EOS (position 7): causality keeps it out of the answer
    torch.testing.assert_close(fusion(emb, grid, garbage), fusion(emb, grid, q))


def test_grid_coordinates_are_column_and_row_of_the_row_major_grid():
    torch.testing.assert_close(grid_coordinates(4), torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
    nine = grid_coordinates(9)
    assert nine[5].tolist() == [1.0, 0.0]  # cell 5: row 1, column 2
    assert nine[7].tolist() == [0.0, 1.0]  # cell 7: row 2, column 1
    with pytest.raises(ValueError, match="square"):
        grid_coordinates(12)


def one_hot_state(objects) -> torch.Tensor:
    """[9, 13] (colour ; shape ; empty) per cell of a list of (colour, shape, cell), written from the list."""
    state = torch.zeros(9, 13)
    state[:, 12] = 1
    for colour, shape, cell in objects:
        state[cell, 12] = 0
        state[cell, list(COLOURS).index(colour)] = state[cell, 9 + SHAPES.index(shape)] = 1
    return state


def test_state_encoder_reads_the_generated_objects_off_the_pixels(world):
    """encoder=state's tokens are the scene the generator drew (its object list, not the pixels), for every
    question world scene and every seed-world image; the pooled embedding is a unit vector."""
    encoder = SceneStateEncoder(8)
    emb, tokens = encoder.encode_with_tokens(world.pixels.float() / 255)
    assert tokens.shape == (len(world.scenes), 9, 13)
    for scene, state in zip(world.scenes, tokens, strict=True):
        assert torch.equal(state, one_hot_state(scene)), scene
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))
    seed_world = [(c, s, p) for c in COLOURS for s in SHAPES for p in range(9)]
    images = torch.stack([to_tensor(render(c, s, POSITIONS[p])) for c, s, p in seed_world])
    for obj, state in zip(seed_world, encoder.read(images), strict=True):
        assert torch.equal(state, one_hot_state([obj])), obj


def test_state_encoder_runs_in_bfloat16(world):
    """Under trainer.precision=bf16-true the images and weights are bf16: the tokens come back in that dtype, and
    the same as in float32."""
    encoder = SceneStateEncoder(8).to(torch.bfloat16)
    images = world.pixels[:16].float() / 255
    emb, tokens = encoder.encode_with_tokens(images.to(torch.bfloat16))
    assert tokens.dtype == emb.dtype == torch.bfloat16
    assert torch.equal(tokens.float(), encoder.read(images).float())


def test_pairs_fusion_is_g_over_every_concatenated_pair_then_f():
    """The broadcast first layer against the Relation Network written out: g on [o_i ; o_j ; q] for each ordered
    pair with one weight matrix over the concatenation, averaged over the N x N pairs, then f."""
    fusion = make("pairs")
    emb, grid = image_inputs(2)
    q = questions("is the red circle left of the blue square?", "how many circles are there?")
    objects = torch.cat([fusion.token_norm(grid), grid_coordinates(16).expand(2, -1, -1)], dim=-1)  # [B, N, C + 2]
    question = fusion.text_encoder(q)
    weight = torch.cat([fusion.first.weight, fusion.second.weight, fusion.question.weight], dim=1)
    expected = []
    for b in range(2):
        pair_outputs = [
            fusion.g(torch.cat([objects[b, i], objects[b, j], question[b]]) @ weight.T + fusion.first.bias)
            for i in range(16)
            for j in range(16)
        ]
        expected.append(fusion.f(fusion.pool_norm(torch.stack(pair_outputs).mean(dim=0))))
    torch.testing.assert_close(fusion(emb, grid, q), torch.stack(expected))


def test_film_block_is_a_per_channel_scale_and_shift_of_the_normalised_conv():
    """FiLMBlock written out: inner = relu(conv1x1([x ; coords])), out = inner + relu(gamma * norm(conv3x3(inner))
    + beta), where gamma and beta are one number per (example, channel) and the norm (eval) uses its running stats."""
    torch.manual_seed(0)
    block = FiLMBlock(4).eval()
    block.norm.running_mean.uniform_(-1, 1), block.norm.running_var.uniform_(0.5, 2)
    x, coords = torch.randn(2, 4, 3, 3), grid_coordinates(9).T.reshape(1, 2, 3, 3).expand(2, -1, -1, -1)
    gamma, beta = torch.randn(2, 4), torch.randn(2, 4)
    inner = torch.relu(block.inner(torch.cat([x, coords], dim=1)))
    conv = block.conv(inner)
    mean, std = block.norm.running_mean[None, :, None, None], (block.norm.running_var + block.norm.eps).sqrt()
    expected = inner + torch.relu(
        gamma[:, :, None, None] * (conv - mean) / std[None, :, None, None] + beta[..., None, None]
    )
    torch.testing.assert_close(block(x, coords, gamma, beta), expected)


def test_film_lays_the_row_major_tokens_out_as_their_map_with_matching_coordinates():
    """Token n of the grid sits at map cell (n // side, n % side), and the coordinate channels there are
    grid_coordinates' (column, row) of token n: the reshape and the coordinates agree."""
    fusion = make("film")
    for n, (col, row) in enumerate(grid_coordinates(16).tolist()):
        assert fusion.coords[0, :, n // 4, n % 4].tolist() == [col, row]
    seen = {}
    fusion.stem.register_forward_hook(lambda module, args, out: seen.update(map=args[0]))
    emb, grid = image_inputs(1)
    fusion(emb, grid, questions("how many circles are there?"))
    torch.testing.assert_close(seen["map"][0, :12, 1, 2], grid[0, 6])  # token 6: row 1, column 2
    assert seen["map"][0, 12:, 1, 2].tolist() == grid_coordinates(16)[6].tolist()


def test_film_starts_as_the_unconditioned_network():
    """The question layer starts at zero, so every gamma is 1 and every beta 0: before training the answer does
    not depend on the question (FiLM's initialisation; training then learns what each question switches on)."""
    torch.manual_seed(0)
    fusion = FiLMFusion(fusion_sizes(MAX_LEN), question_encoder(MAX_LEN), width=16, blocks=2, hidden=16).eval()
    assert not fusion.film.weight.any() and not fusion.film.bias.any()  # gamma - 1 = beta = 0 for every question
    emb, grid = image_inputs(2)
    a = fusion(emb, grid, questions("how many circles are there?", "is there a red circle?"))
    b = fusion(emb, grid, questions("is there a red circle?", "how many circles are there?"))
    torch.testing.assert_close(a, b)


# --- The task -----------------------------------------------------------------------------------------------------


def question_form(text: str) -> str:
    """The question with its colour and shape words abstracted: what 'the same question form' means for the prior."""
    words = []
    for word in text.replace("?", " ?").split():
        if word in COLOURS:
            word = "<colour>"
        elif word in SHAPES or word.removesuffix("s") in SHAPES:
            word = "<shape>"
        words.append(word)
    return " ".join(words)


def prior_accuracy(world: VQADataModule) -> dict[str, float]:
    """Per family, the val accuracy of always answering the most common training answer of the question's form
    (its family's most common answer for a form never seen in training)."""
    by_form, by_family = defaultdict(Counter), defaultdict(Counter)
    for i in world.train_idx.tolist():
        by_form[question_form(world.texts[i])][world.answers[i]] += 1
        by_family[world.questions[i].family][world.answers[i]] += 1
    right, total = Counter(), Counter()
    for i in world.val_idx.tolist():
        family = world.questions[i].family
        seen = by_form.get(question_form(world.texts[i])) or by_family[family]
        right[family] += seen.most_common(1)[0][0] == world.answers[i]
        total[family] += 1
    return {f: right[f] / total[f] for f in FAMILIES}


@pytest.mark.slow
def test_blind_matches_the_answer_prior_of_each_family(make_cfg):
    from nanovlm.run.training import train

    # Most question forms' answers are near uniform, so both accuracies sit near chance and differ by sampling noise:
    # a large val split (about 5,300 questions per family) keeps that noise well inside the 0.03 bar.
    world = {"n_questions": 40000, "val_fraction": 0.8, "split_seed": 0}
    settings = [f"data.{k}={v}" for k, v in world.items()]
    metrics = train(make_cfg("data=vqa", "fusion=blind", "trainer.max_epochs=10", *settings))
    prior = prior_accuracy(VQADataModule(**world))
    for family in FAMILIES:
        assert abs(metrics[f"val/vqa_acc_{family}"] - prior[family]) <= 0.03, (family, metrics, prior)


def test_image_init_copies_a_checkpoints_image_encoder_and_freezes_it(tmp_path):
    from nanovlm.models.image import CNNEncoder
    from nanovlm.tasks.vqa import VQA, load_image_encoder

    torch.manual_seed(1)
    trained = CNNEncoder(embed_dim=8, channels=(4, 4, 4, 4))
    path = tmp_path / "dual.ckpt"
    state = {f"image_encoder.{k}": v for k, v in trained.state_dict().items()} | {"text_encoder.w": torch.zeros(1)}
    torch.save({"state_dict": state}, path)
    fresh = CNNEncoder(embed_dim=8, channels=(4, 4, 4, 4))
    load_image_encoder(fresh, str(path))
    for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"model.image_init: .* does not fit encoder="):
        load_image_encoder(CNNEncoder(embed_dim=16, channels=(4, 4, 4, 4)), str(path))
    sizes = FusionSizes(TOK.vocab_size, tuple(ANSWER_IDS), MAX_LEN, TOK.pad_id, TOK.eos_id, 8, 12, 16)
    fusion = LateFusion(sizes, AttentionTextEncoder(TOK.vocab_size, 8, width=16, heads=2, max_len=MAX_LEN))
    task = VQA(fresh, fusion, torch.optim.AdamW, image_init=str(path), freeze_image=True)
    assert not any(p.requires_grad for p in task.image_encoder.parameters())
    assert all(p.requires_grad for p in task.fusion.parameters())
    with pytest.raises(ValueError, match=r"model.image_init: no checkpoint file at"):
        VQA(fresh, fusion, torch.optim.AdamW, image_init=str(tmp_path / "missing.ckpt"))


def test_every_question_the_families_can_ask_fits_the_tokenizer_whole():
    tok = QuestionTokenizer()
    for text in all_questions():
        ids = tok.encode(text)
        assert ids[-1] == tok.pad_id or ids[-1] == tok.eos_id
        assert tok.decode(ids) == text


def test_blind_trains_and_counts_only_what_reads_the_question():
    """fusion=blind never encodes the picture: its image encoder is neither trainable nor in the optimizer, so the
    parameter count a run reports (model/params, the summary line) is the question model's alone."""
    from nanovlm.models.image import CNNEncoder
    from nanovlm.tasks.vqa import VQA

    image_encoder = CNNEncoder(embed_dim=8, channels=(4, 4, 4, 4))
    fusion = make("blind").train()
    task = VQA(image_encoder, fusion, torch.optim.AdamW)
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in fusion.parameters()}
    optimizer = task.configure_optimizers()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable
    late = VQA(CNNEncoder(embed_dim=8, channels=(4, 4, 4, 4)), make("late"), torch.optim.AdamW)
    assert all(p.requires_grad for p in late.image_encoder.parameters())  # a design that reads it trains it


def test_a_query_clause_decides_only_when_the_named_object_is_not_unique():
    """Hand-built scenes: cells 0-8 row by row, so cell 0 is left of cell 2."""
    from types import SimpleNamespace

    from nanovlm.data.questions import Question, answer, answer_ignoring_clause, clause_decides
    from nanovlm.evaluate.vqa import clause_accuracy

    two_circles = (("red", "circle", 0), ("green", "circle", 2), ("blue", "square", 1))
    which = Question("query_colour", ("circle", "left of", "blue", "square"))
    assert answer(two_circles, which) == "red"
    assert clause_decides(two_circles, which)  # "the circle" alone: red or green
    assert answer_ignoring_clause(two_circles, which, "red") == 0.5
    one_circle = (("red", "circle", 0), ("blue", "square", 1))
    assert not clause_decides(one_circle, which)  # the only circle: the clause changes nothing
    assert not clause_decides(two_circles, Question("query_colour", ("circle",)))  # no clause
    same_colour = (("red", "circle", 0), ("red", "circle", 2), ("blue", "square", 1), ("green", "circle", 5))
    shape = Question("query_shape", ("red", "left of", "blue", "square"))
    assert clause_decides(same_colour, Question("query_colour", ("circle", "left of", "blue", "square")))
    assert not clause_decides(same_colour, Question("relation", ("red", "circle", "left of", "blue", "square")))
    assert (
        answer_ignoring_clause(same_colour, Question("query_colour", ("circle", "below", "blue", "square")), "red")
        == 2 / 3
    )
    assert not clause_decides(one_circle, shape)
    world = SimpleNamespace(scenes=[two_circles, one_circle], questions=[which, which], answers=["red", "red"])
    result = clause_accuracy(world, torch.tensor([0, 1]), torch.tensor([True, False]))
    assert result == {"n": 1, "accuracy": 1.0, "ignoring_clause": 0.5}  # the second item's clause decides nothing


def test_model_vqa_without_a_fusion_names_every_fusion_option(make_cfg):
    """model=vqa with the fusion group removed fails with one line listing every conf/fusion option (read from the
    directory, so a new design is named without editing the message)."""
    from nanovlm.run.training import build_model

    cfg = make_cfg("data=vqa", "~fusion", "data.n_questions=120")
    with pytest.raises(ValueError, match=r"^model=vqa needs fusion=blind\|cross\|early\|film\|late\|pairs \(data=vqa"):
        build_model(cfg, QuestionTokenizer())

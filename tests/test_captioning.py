"""The captioning objectives: the decoder, teacher forcing, likelihood scoring, greedy decoding, the metrics, and
the Captioner learning (loss=cap, loss=coca)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanovlm.data.shapes import COLOURS, POSITIONS, SHAPES, VOCAB, all_triples, build_tensors
from nanovlm.evaluate.checkpoint import EvalConfig, evaluate
from nanovlm.evaluate.metrics import CaptionAccuracy, true_item_rank
from nanovlm.models.decoder import TextDecoder, log_likelihood, pair_log_likelihoods
from nanovlm.models.decoding import greedy_decode, parallel_decode, slot_vocabulary
from nanovlm.models.image import CNNEncoder, ViTEncoder
from nanovlm.objectives.captioning import CaptionLoss, CocaLoss, teacher_forced_loss
from nanovlm.objectives.contrastive import clip_loss
from nanovlm.run.training import build_model, train
from nanovlm.tasks.captioner import Captioner, slot_names

V = len(VOCAB)


def _decoder(seed: int = 0, **sizes: int) -> TextDecoder:
    torch.manual_seed(seed)
    return TextDecoder(V, token_dim=8, num_tokens=5, embed_dim=6, **sizes).eval()


def _memory(decoder: TextDecoder, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return decoder.memory(torch.randn(batch, 6, generator=g), torch.randn(batch, 5, 8, generator=g))


def test_decoder_is_causal() -> None:
    """Changing the words after position t leaves the logits at positions <= t unchanged, and changing a word
    before it changes them (so the check can fail)."""
    decoder = _decoder()
    memory = _memory(decoder, 4)
    tokens = torch.randint(1, V, (4, 4))
    tokens[:, 0] = 0
    with torch.no_grad():
        logits = decoder(tokens, memory)
        for t in range(3):
            changed = tokens.clone()
            changed[:, t + 1 :] = (changed[:, t + 1 :] % (V - 1)) + 1  # other words after t
            torch.testing.assert_close(decoder(changed, memory)[:, : t + 1], logits[:, : t + 1])
            assert not torch.allclose(decoder(changed, memory)[:, t + 1 :], logits[:, t + 1 :])


def test_decoder_reads_the_image() -> None:
    decoder = _decoder()
    tokens = torch.zeros(2, 3, dtype=torch.long)
    with torch.no_grad():
        assert not torch.allclose(decoder(tokens, _memory(decoder, 2, seed=1)), decoder(tokens, _memory(decoder, 2, 2)))


def test_teacher_forced_loss_matches_a_word_by_word_computation() -> None:
    """The loss equals the mean over captions and positions of -log softmax(logits)[next word], where each
    position's logits come from a separate pass over only the prefix before it (no causal mask needed)."""
    decoder = _decoder(depth=1)
    _, tokens, _ = build_tensors()
    tokens = tokens[::20]  # 13 captions
    memory = _memory(decoder, len(tokens))
    terms = []
    with torch.no_grad():
        for caption, mem in zip(tokens, memory, strict=True):
            for t in range(1, len(caption)):
                logits = decoder(caption[None, :t], mem[None])[0, -1]  # [V], given words 0..t-1
                terms.append(logits[caption[t]] - torch.logsumexp(logits, dim=0))
        expected = -torch.stack(terms).mean()
        torch.testing.assert_close(teacher_forced_loss(decoder, memory, tokens), expected)
        # log_likelihood is the per-caption sum of the same terms
        torch.testing.assert_close(
            log_likelihood(decoder, memory, tokens), torch.stack(terms).view(len(tokens), 3).sum(1)
        )


def test_pair_log_likelihoods_equal_one_pass_per_pair() -> None:
    """The shared-prefix shortcut and the chunking give the same matrix as scoring every pair on its own."""
    decoder = _decoder()
    _, tokens, _ = build_tensors()
    memory = _memory(decoder, 3)
    with torch.no_grad():
        fast = pair_log_likelihoods(decoder, memory, tokens, max_pairs=40)  # several chunks
        slow = torch.stack([log_likelihood(decoder, m[None].expand(len(tokens), -1, -1), tokens) for m in memory])
    torch.testing.assert_close(fast, slow)


def _hand_set_decoder(first: list[int], second: list[int]) -> TextDecoder:
    """A decoder whose next-word logits depend only on the current word w: 2 for first[w], 1 for second[w],
    0 for the rest. The blocks are made identities (attention and MLP outputs zeroed), the embedding of w is
    10 * e_w, and the head maps LayerNorm(10 e_w) = a (e_w - 1/W) to a * (H[:, w] - row mean); `first` and
    `second` are permutations, so every row of H has the same sum and the ranking is H[:, w]'s."""
    decoder = TextDecoder(V, token_dim=4, num_tokens=2, embed_dim=4, width=V, depth=1, heads=1)
    with torch.no_grad():
        for p in decoder.parameters():
            p.zero_()
        decoder.embed.weight.copy_(10 * torch.eye(V))
        decoder.norm.weight.fill_(1.0)
        for layer in decoder.blocks.layers:
            for norm in (layer.norm1, layer.norm2, layer.norm3):
                norm.weight.fill_(1.0)
        head = torch.zeros(V, V)
        head[first, range(V)] = 2.0
        head[second, range(V)] = 1.0
        decoder.head.weight.copy_(head)
    return decoder.eval()


def test_greedy_decoding_follows_a_hand_set_decoder() -> None:
    first = [(w + 1) % V for w in range(V)]  # the best next word is w + 1
    second = [(w + 2) % V for w in range(V)]  # the runner-up is w + 2
    decoder = _hand_set_decoder(first, second)
    memory = torch.randn(2, 3, V)
    written = greedy_decode(decoder, memory, bos_id=0, length=4)
    assert written.tolist() == [[0, 1, 2, 3]] * 2  # each word fed back in: 0 -> 1 -> 2 -> 3
    # Constrained: slot 2 may not hold word 2, so the runner-up (1 + 2 = 3) is written, and the chain goes on from 3.
    allowed = torch.ones(4, V, dtype=torch.bool)
    allowed[2, 2] = False
    assert greedy_decode(decoder, memory, 0, 4, allowed).tolist() == [[0, 1, 3, 4]] * 2


def test_parallel_decoding_reads_every_word_from_cls() -> None:
    """Every input is [CLS] (word 0), so each slot gets 0's best next word (1), unless the slot forbids it."""
    decoder = _hand_set_decoder([(w + 1) % V for w in range(V)], [(w + 2) % V for w in range(V)])
    memory = torch.randn(2, 3, V)
    assert parallel_decode(decoder, memory, bos_id=0, length=4).tolist() == [[0, 1, 1, 1]] * 2
    allowed = torch.ones(4, V, dtype=torch.bool)
    allowed[2, 1] = False
    assert parallel_decode(decoder, memory, 0, 4, allowed).tolist() == [[0, 1, 2, 1]] * 2


def test_parallel_prediction_trains_marked_captions_from_cls_inputs() -> None:
    """CapPa's loss: captions marked parallel are scored as if every input word were [CLS]."""
    decoder = _decoder()
    tokens = build_tensors()[1][:6]
    memory = _memory(decoder, 6)
    parallel = torch.tensor([True, False, True, False, False, True])
    inputs = tokens[:, :-1].clone()
    inputs[parallel] = 0  # [CLS]
    with torch.no_grad():
        logits = decoder(inputs, memory)
        expected = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        torch.testing.assert_close(teacher_forced_loss(decoder, memory, tokens, parallel), expected)
        assert not torch.allclose(teacher_forced_loss(decoder, memory, tokens), expected)


def test_slot_names_come_from_the_caption_form() -> None:
    assert slot_names("<colour> <shape> <position>") == ("colour", "shape", "position")
    names = ("colour_1", "shape_1", "relation", "colour_2", "shape_2")
    assert slot_names("<colour> <shape> <relation> <colour> <shape>") == names


def test_captioner_on_scenes_scores_hard_negatives_by_likelihood(make_cfg) -> None:
    """On the scenes world the decoder is sized by its 6-token captions and 11 words, its slots are named from
    the caption form, and a negative's score is its own caption's log-likelihood given the image."""
    model = build_model(make_cfg("data=scenes", "loss=cap")).eval()
    assert model.slots == ("colour_1", "shape_1", "relation", "colour_2", "shape_2")
    assert model.loss.decoder.pos_embed.shape[1] == 6 and model.loss.decoder.head.out_features == 15
    from nanovlm.data.scenes import ScenesDataModule

    world = ScenesDataModule.__new__(ScenesDataModule)  # only the tokenizer, not the 12,636 images
    tokenizer = world.world_tokenizer()
    truth = tokenizer.encode("red circle left-of blue square")
    negatives = tokenizer.encode_batch(["blue square left-of red circle", "red circle above blue square"])
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        read = model.read_images(images)
        scores = model.negative_scores(read, negatives[None])  # [1, 2]
        expected = log_likelihood(model.loss.decoder, read.memory.expand(2, -1, -1), negatives)
        torch.testing.assert_close(scores[0], expected)
        torch.testing.assert_close(
            model.score_pairs(images, truth[None]), log_likelihood(model.loss.decoder, read.memory, truth[None])
        )


def test_slot_vocabulary_is_the_words_each_slot_holds() -> None:
    _, tokens, _ = build_tensors()
    allowed = slot_vocabulary(tokens, V)
    assert [VOCAB[i] for i in allowed[1].nonzero().flatten()] == list(COLOURS)
    assert [VOCAB[i] for i in allowed[2].nonzero().flatten()] == list(SHAPES)
    assert [VOCAB[i] for i in allowed[3].nonzero().flatten()] == list(POSITIONS)
    assert allowed[0].sum() == 1 and allowed[0, 0]


def test_caption_accuracy_counts_exact_and_per_slot() -> None:
    metric = CaptionAccuracy(("colour", "shape", "position"))
    targets = torch.tensor([[0, 1, 10, 13], [0, 2, 11, 14], [0, 3, 12, 15]])
    generated = torch.tensor([[0, 1, 10, 13], [0, 2, 12, 14], [0, 4, 12, 16]])
    metric.update(generated[:2], targets[:2], torch.tensor([5, 6]))
    metric.update(generated[1:], targets[1:], torch.tensor([6, 7]))  # id 6 again: counted once
    out = metric.compute()
    assert out["exact"] == pytest.approx(1 / 3)
    assert (out["colour"], out["shape"], out["position"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))


@pytest.mark.parametrize("encoder", [CNNEncoder(16), ViTEncoder(16)], ids=["cnn", "vit"])
def test_token_grid_leaves_the_pooled_embedding_unchanged(encoder: torch.nn.Module) -> None:
    images = build_tensors()[0][:6]
    with torch.no_grad():
        embedding, tokens = encoder.encode_with_tokens(images)
        torch.testing.assert_close(embedding, encoder(images), rtol=0, atol=0)
    assert tokens.shape == (6, encoder.num_tokens, encoder.token_dim) == (6, 16, encoder.token_dim)


def test_cnn_tokens_are_the_cells_of_its_4x4_map() -> None:
    encoder = CNNEncoder(16)
    images = build_tensors()[0][:3]
    with torch.no_grad():
        x = images * 2 - 1
        for conv in [m for m in encoder.convs if isinstance(m, torch.nn.Conv2d)][:3]:
            x = F.gelu(conv(x))  # [B, 128, 4, 4] after the third conv
        _, tokens = encoder.encode_with_tokens(images)
    assert x.shape[-2:] == (4, 4)
    torch.testing.assert_close(tokens, x.flatten(2).transpose(1, 2))


def test_coca_loss_is_the_weighted_sum_of_clip_and_captioning() -> None:
    torch.manual_seed(0)
    loss = CocaLoss(V, token_dim=8, num_tokens=5, embed_dim=6, contrastive_weight=0.3, caption_weight=2.0)
    image_emb = F.normalize(torch.randn(7, 6), dim=-1)
    text_emb = F.normalize(torch.randn(7, 6), dim=-1)
    memory = loss.decoder.memory(image_emb, torch.randn(7, 5, 8))
    tokens = build_tensors()[1][:7]
    expected = 0.3 * clip_loss(image_emb, text_emb, torch.tensor(1 / 0.07).log()) + 2.0 * teacher_forced_loss(
        loss.decoder, memory, tokens
    )
    torch.testing.assert_close(loss(image_emb, memory, tokens, text_emb), expected)
    with pytest.raises(ValueError, match=r"loss\.contrastive_weight and loss\.caption_weight must be >= 0"):
        CocaLoss(V, 8, 5, 6, contrastive_weight=0.0, caption_weight=0.0)
    with pytest.raises(ValueError, match=r"loss\.score must be one of likelihood, cosine"):
        CocaLoss(V, 8, 5, 6, score="dot")


def test_build_model_picks_the_captioner_and_sizes_its_decoder(make_cfg) -> None:
    cap = build_model(make_cfg("loss=cap", "encoder=vit"))
    assert isinstance(cap, Captioner) and cap.text_encoder is None and isinstance(cap.loss, CaptionLoss)
    assert cap.loss.decoder.token_proj.in_features == 64 and cap.loss.decoder.memory_pos.shape[1] == 17
    coca = build_model(make_cfg("loss=coca"))
    assert isinstance(coca, Captioner) and coca.text_encoder is not None
    assert coca.loss.decoder.token_proj.in_features == 128  # the CNN's 4x4 map has 128 channels
    clip = build_model(make_cfg("loss=clip"))
    assert not isinstance(clip, Captioner)


def test_likelihood_ties_count_as_failures(make_cfg) -> None:
    """A decoder whose head is zeroed gives every caption the same likelihood: each true caption is tied with
    all 243, so it ranks last and recall@1 is 0, as for a constant cosine matrix."""
    model = build_model(make_cfg("loss=cap")).eval()
    with torch.no_grad():
        model.loss.decoder.head.weight.zero_()
        model.loss.decoder.head.bias.zero_()
        images, tokens, _ = build_tensors()
        scores = model.score_matrix(model.read_images(images[:10]), model.read_captions(tokens))  # [10, 243]
    assert torch.equal(scores, torch.full_like(scores, scores[0, 0]))
    assert true_item_rank(scores, torch.arange(10)).tolist() == [243] * 10


@pytest.mark.slow
def test_captioner_learns_and_evaluate_writes_its_captions(make_cfg, tmp_path, capsys) -> None:
    """A short run: captions of never-trained val images come out mostly right, and the per-slot numbers are at
    least the exact one (a caption is exact only if each slot is). `nanovlm.evaluate` on its last checkpoint
    writes the image's caption and reproduces validation's numbers on the same weights (same decoding, same
    likelihood ranking)."""
    metrics = train(make_cfg("loss=cap", "trainer.max_epochs=20", "data.batch_size=32", "torch_threads=1"))
    assert metrics["val/caption_exact"] >= 0.5, metrics
    for slot in ("colour", "shape", "position"):
        assert metrics[f"val/caption_{slot}"] >= metrics["val/caption_exact"]
    assert metrics["val/i2t_R@1"] >= 0.5, metrics

    out = evaluate(EvalConfig(ckpt=str(tmp_path / "checkpoints" / "last.ckpt"), out=str(tmp_path / "eval"), image="17"))
    printed = capsys.readouterr().out
    written = out["image"]["generated"].split()
    assert (
        f"gallery image 17 ({' '.join(all_triples()[17])}) -> generated caption: {out['image']['generated']!r}"
        in printed
    )
    assert written[0] in COLOURS and written[1] in SHAPES and written[2] in POSITIONS  # constrained decoding
    assert out["captions"]["val"]["exact"] == pytest.approx(metrics["val/caption_exact"], abs=1e-6)
    for key in ("i2t_R@1", "t2i_R@1", "i2t_mean_rank"):
        assert out["retrieval"]["val"][key] == pytest.approx(metrics[f"val/{key}"], abs=1e-6), key
    assert "zero_shot" not in out  # no text embeddings to build prompts from


@pytest.mark.integration
def test_auto_retrieval_skips_a_costly_gallery_and_keeps_best_by_captions(make_cfg, tmp_path, monkeypatch, capsys):
    """loss.retrieval=auto: above MAX_LIKELIHOOD_PAIRS decoder passes (data=scenes; here the seed world with the
    limit lowered below its 243 x 27) validation does not rank, says so once, and best.ckpt follows
    val/caption_exact instead of a never-finite val/R@1. Under the limit it ranks as before."""
    import nanovlm.tasks.captioner as captioner_module
    from nanovlm.run.training import train

    monkeypatch.setattr(captioner_module, "MAX_LIKELIHOOD_PAIRS", 243 * 27 - 1)
    metrics = train(make_cfg("loss=cap", "trainer.max_epochs=2", "loss.width=16", "loss.depth=1"))
    out = capsys.readouterr().out
    assert math.isnan(metrics["val/R@1"]) and 0 <= metrics["val/caption_exact"] <= 1
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert "best.ckpt not written" not in out and "caption exact" in out
    monkeypatch.setattr(captioner_module, "MAX_LIKELIHOOD_PAIRS", 243 * 27)
    ranked = train(make_cfg("loss=cap", "trainer.max_epochs=1", "loss.width=16", "loss.depth=1"))
    assert not math.isnan(ranked["val/R@1"])

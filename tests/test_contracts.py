"""The contracts every dataset and model keep (nanovlm.data.datamodule, nanovlm.data.tokenizer): the tokenizer
protocol and its saved state, padding that changes nothing, decoding that ends at EOS, any image size, and the
gallery with several true items both ways. Each is checked against a hand-built case."""

from __future__ import annotations

import json

import pytest
import torch

from nanovlm.data.datamodule import Gallery
from nanovlm.data.shapes import ShapesDataModule
from nanovlm.data.tokenizer import TextTokenizer, Tokenizer, padding_mask, tokenizer_from_state
from nanovlm.evaluate.retrieval import retrieval_from_scores
from nanovlm.models.decoder import TextDecoder, log_likelihood, pair_log_likelihoods
from nanovlm.models.decoding import end_at_eos, greedy_decode, parallel_decode
from nanovlm.models.image import CNNEncoder, ViTEncoder
from nanovlm.models.text import AttentionTextEncoder, MeanPoolTextEncoder
from nanovlm.objectives.captioning import teacher_forced_loss

PAD, BOS, EOS = 0, 1, 2


def _padded(tokens: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([tokens, torch.full((len(tokens), extra), PAD)], dim=1)


# --- The tokenizer protocol ---------------------------------------------------------------------------------------


def test_the_world_tokenizer_keeps_the_protocol_and_rebuilds_from_its_state() -> None:
    tokenizer = ShapesDataModule.world_tokenizer()
    assert isinstance(tokenizer, TextTokenizer)
    assert (tokenizer.vocab_size, tokenizer.max_len, tokenizer.bos_id) == (22, 4, 0)
    assert tokenizer.pad_id is tokenizer.eos_id is tokenizer.unk_id is None  # fixed length, closed vocabulary
    again = tokenizer_from_state(json.loads(json.dumps(tokenizer.state())))  # what a checkpoint and tokenizer.json hold
    assert isinstance(again, Tokenizer) and again.state() == tokenizer.state()
    assert torch.equal(again.encode("red circle top-left"), tokenizer.encode("red circle top-left"))
    assert again.decode(tokenizer.encode("blue square centre")) == "blue square centre"


def test_an_unknown_tokenizer_kind_is_one_line() -> None:
    with pytest.raises(ValueError, match="tokenizer kind 'nope' is not one of"):
        tokenizer_from_state({"kind": "nope"})


def test_the_padding_mask_is_derived_from_the_ids() -> None:
    tokens = torch.tensor([[BOS, 5, EOS, PAD], [BOS, 5, 6, EOS]])
    assert padding_mask(tokens, None) is None
    assert padding_mask(tokens, PAD).tolist() == [[True, True, True, False], [True, True, True, True]]


# --- Padding changes nothing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["mean", "attention"])
def test_a_caption_embeds_the_same_with_any_padding(encoder: str) -> None:
    torch.manual_seed(0)
    if encoder == "mean":
        model = MeanPoolTextEncoder(vocab_size=12, embed_dim=8, width=16, pad_id=PAD)
    else:
        model = AttentionTextEncoder(vocab_size=12, embed_dim=8, width=16, heads=2, max_len=10, pad_id=PAD)
    tokens = torch.tensor([[BOS, 5, 7, EOS], [BOS, 9, EOS, PAD]])
    alone = model(tokens).detach()
    for extra in (1, 4):
        assert torch.allclose(model(_padded(tokens, extra)), alone, atol=1e-6)
    # and the mask matters: without it, padding would move the embedding
    if encoder == "mean":
        unmasked = MeanPoolTextEncoder(vocab_size=12, embed_dim=8, width=16)
        unmasked.load_state_dict(model.state_dict())
        assert not torch.allclose(unmasked(_padded(tokens, 4)), alone, atol=1e-3)


def test_a_caption_has_the_same_likelihood_and_loss_with_any_padding() -> None:
    torch.manual_seed(0)
    sizes = {"width": 16, "heads": 2, "max_len": 10, "pad_id": PAD}
    decoder = TextDecoder(vocab_size=12, token_dim=6, num_tokens=4, embed_dim=8, **sizes)
    memory = decoder.memory(torch.randn(2, 8), torch.randn(2, 4, 6))
    tokens = torch.tensor([[BOS, 5, 7, EOS], [BOS, 9, EOS, PAD]])
    likelihood = log_likelihood(decoder, memory, tokens).detach()
    # the second caption by hand: log p(9 | BOS) + log p(EOS | BOS 9); its padding adds nothing
    log_probs = decoder(tokens[1:, :3], memory[1:]).log_softmax(-1)[0]
    assert torch.allclose(likelihood[1], log_probs[0, 9] + log_probs[1, EOS], atol=1e-5)
    loss = teacher_forced_loss(decoder, memory, tokens).detach()
    for extra in (1, 3):
        padded = _padded(tokens, extra)
        assert torch.allclose(log_likelihood(decoder, memory, padded), likelihood, atol=1e-5)
        assert torch.allclose(pair_log_likelihoods(decoder, memory, padded).diagonal(), likelihood, atol=1e-5)
        assert torch.allclose(teacher_forced_loss(decoder, memory, padded), loss, atol=1e-6)


# --- Decoding ends at EOS -------------------------------------------------------------------------------------------


class _Scripted(torch.nn.Module):
    """A 'decoder' whose next token is scripted per row: row r writes script[r][t] at position t + 1."""

    def __init__(self, script: list[list[int]], vocab: int = 8) -> None:
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = torch.zeros(len(tokens), tokens.shape[1], self.vocab)
        for r, row in enumerate(self.script):
            for t in range(tokens.shape[1]):
                logits[r, t, row[min(t, len(row) - 1)]] = 1.0
        return logits


def test_greedy_decoding_stops_at_eos_and_pads_after_it() -> None:
    decoder = _Scripted([[5, EOS, 6, 6, 6], [5, 6, EOS, 6, 6]])
    written = greedy_decode(decoder, torch.zeros(2, 1, 4), BOS, length=6, eos_id=EOS, pad_id=PAD)
    assert written.tolist() == [[BOS, 5, EOS, PAD, PAD, PAD], [BOS, 5, 6, EOS, PAD, PAD]]
    assert decoder.calls == 3  # every caption had ended after three words: no further passes


def test_parallel_decoding_and_fixed_length_captions() -> None:
    written = parallel_decode(_Scripted([[5, EOS, 6, 6]]), torch.zeros(1, 1, 4), BOS, 5, eos_id=EOS, pad_id=PAD)
    assert written.tolist() == [[BOS, 5, EOS, PAD, PAD]]
    tokens = torch.tensor([[BOS, EOS, 3, EOS]])
    assert torch.equal(end_at_eos(tokens, None, None), tokens)  # no end token: the closed worlds, unchanged
    assert end_at_eos(tokens, EOS, PAD).tolist() == [[BOS, EOS, PAD, PAD]]


# --- Any image size -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 48, 64])
def test_both_image_encoders_take_the_configured_size(size: int) -> None:
    images = torch.rand(2, 3, size, size)
    for encoder in (CNNEncoder(embed_dim=8, image_size=size), ViTEncoder(embed_dim=8, patch_size=8, image_size=size)):
        emb, tokens = encoder.encode_with_tokens(images)
        assert emb.shape == (2, 8) and tokens.shape[1] == encoder.num_tokens
        assert torch.allclose(encoder(images), emb, atol=1e-6)
    assert CNNEncoder(embed_dim=8, image_size=size).num_tokens == ((size + 7) // 8) ** 2


def test_a_world_resizes_to_data_image_size() -> None:
    world = ShapesDataModule(image_size=64)
    assert world.images.shape == (243, 3, 64, 64) and 0 <= float(world.images.min()) <= float(world.images.max()) <= 1
    # a resize, not a new picture: averaging 2x2 blocks gives back the 32 px world closely
    small = torch.nn.functional.avg_pool2d(world.images, 2)
    assert (small - ShapesDataModule().images).abs().mean() < 0.03


# --- The gallery ----------------------------------------------------------------------------------------------------


def test_a_val_gallery_holds_the_val_images_and_their_captions_only() -> None:
    world = ShapesDataModule(gallery="val")
    gallery = world.gallery()
    assert torch.equal(gallery.image_index, world.val_idx.sort().values)
    assert len(gallery.tokens) == len(world.val_idx) == 49
    assert torch.equal(gallery.truth, torch.eye(49, dtype=torch.bool))
    assert torch.equal(gallery.rows(gallery.image_index.flip(0)), torch.arange(49).flip(0))
    with pytest.raises(ValueError, match="not in the gallery"):
        gallery.rows(world.train_idx[:1])


def test_several_true_items_count_in_both_directions() -> None:
    """Two images, three captions: image 0 has captions 0 and 1 (a COCO image's several captions), image 1 has
    caption 2. By hand: image 0's best caption (1) is first, a hit; image 1's caption 2 ranks below caption 0."""
    truth = torch.tensor([[True, True, False], [False, False, True]])
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.1, 0.3]])  # [images, captions]
    out = retrieval_from_scores(scores, torch.arange(2), truth)
    assert out["i2t_R@1"] == 0.5 and out["i2t_mean_rank"] == 1.5  # image 1: caption 2 is beaten by caption 0
    # text queries: caption 0 -> image 0? scores 0.1 vs 0.8: miss; caption 1 -> 0.9 vs 0.1: hit; caption 2 -> 0.3 vs 0.5
    assert out["t2i_R@1"] == pytest.approx(1 / 3)
    gallery = Gallery(torch.zeros(2, 3, 8, 8), torch.zeros(3, 2, dtype=torch.long), truth, torch.tensor([7, 3]),
                      torch.tensor([10, 11, 12]))  # fmt: skip
    assert gallery.rows(torch.tensor([3, 7])).tolist() == [1, 0]
    assert gallery.columns(torch.tensor([12, 10])).tolist() == [2, 0]
    assert gallery.captions_of(torch.tensor([0])).tolist() == [0, 1]

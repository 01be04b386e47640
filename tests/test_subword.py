"""The subword tokenizer: the TextTokenizer protocol's framing (BOS, EOS, PAD, truncation), a round trip through
decode, its state in a checkpoint, and that padding changes neither a caption's embedding nor its likelihood."""

from __future__ import annotations

import json

import pytest
import torch

from nanovlm.data.subword import SubwordTokenizer
from nanovlm.data.tokenizer import TextTokenizer, padding_mask, tokenizer_from_state

CAPTIONS = [
    "a dog runs on the grass",
    "two dogs play in the park",
    "a cat sleeps on a red sofa",
    "the cat is playing with a ball",
    "a man rides a bicycle down the street",
    "children are playing football in the park",
] * 3


@pytest.fixture(params=["bpe", "wordpiece"])
def tokenizer(request) -> SubwordTokenizer:
    return SubwordTokenizer.train(CAPTIONS, request.param, vocab_size=120, max_len=12)


def test_protocol_and_framing(tokenizer: SubwordTokenizer) -> None:
    assert isinstance(tokenizer, TextTokenizer)
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    ids = tokenizer.encode("a dog runs").tolist()
    n = ids.index(tokenizer.eos_id)
    assert ids[0] == tokenizer.bos_id and 2 <= n - 1 <= 3  # three words, a piece or so each
    assert ids[n + 1 :] == [tokenizer.pad_id] * (12 - n - 1) and len(ids) == 12
    assert tokenizer.pad_id not in ids[1:n] and tokenizer.bos_id not in ids[1:n]
    long = tokenizer.encode(" ".join(["the cat"] * 20)).tolist()  # truncated, its end token kept
    assert len(long) == 12 and long[-1] == tokenizer.eos_id and tokenizer.pad_id not in long
    alphabet = len(set("".join(CAPTIONS)) - {" "})  # WordPiece holds each character twice: "c" and "##c"
    assert tokenizer.vocab_size <= 120 + (alphabet if tokenizer.kind == "wordpiece" else 0)
    assert max(tokenizer.encode_batch(CAPTIONS).flatten().tolist()) < tokenizer.vocab_size


def test_round_trip_is_the_normalised_text(tokenizer: SubwordTokenizer) -> None:
    for caption in CAPTIONS[:6]:
        assert tokenizer.decode(tokenizer.encode(caption)) == caption
    assert tokenizer.decode(tokenizer.encode("A  Dog RUNS")) == "a dog runs"  # lower case, spaces collapsed
    batch = tokenizer.encode_batch(CAPTIONS[:4])
    assert torch.equal(batch, torch.stack([tokenizer.encode(c) for c in CAPTIONS[:4]]))


def test_unseen_characters_become_unk(tokenizer: SubwordTokenizer) -> None:
    ids = tokenizer.encode("a zebra").tolist()  # z never occurs in training
    assert tokenizer.unk_id in ids
    assert tokenizer.decode(torch.tensor([tokenizer.bos_id, *tokenizer.encode("dog")[1:3].tolist()])) == "dog"


def test_state_round_trip_and_training_is_deterministic(tokenizer: SubwordTokenizer) -> None:
    state = json.loads(json.dumps(tokenizer.state()))  # JSON-able, as tokenizer.json and the checkpoint hold it
    rebuilt = tokenizer_from_state(state)
    texts = [*CAPTIONS[:6], "an unseen sentence about zebras"]
    assert torch.equal(rebuilt.encode_batch(texts), tokenizer.encode_batch(texts))
    assert (rebuilt.kind, rebuilt.vocab_size, rebuilt.max_len) == (tokenizer.kind, tokenizer.vocab_size, 12)
    # A resumed run trains its tokenizer again: it must be the same one, or the checkpoint is refused.
    assert SubwordTokenizer.train(CAPTIONS, tokenizer.kind, 120, 12).state() == tokenizer.state()


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"tokenizer.kind must be one of bpe, wordpiece, got 'chars'"):
        SubwordTokenizer.train(CAPTIONS, "chars")
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size must be > 4"):
        SubwordTokenizer.train(CAPTIONS, "bpe", vocab_size=3)
    with pytest.raises(ValueError, match=r"data.max_tokens must be >= 3"):
        SubwordTokenizer.train(CAPTIONS, "bpe", max_len=2)


def pad_to(tokens: torch.Tensor, length: int, pad_id: int) -> torch.Tensor:
    return torch.cat([tokens, torch.full((len(tokens), length - tokens.shape[1]), pad_id)], dim=1)


@pytest.mark.parametrize("encoder", ["mean", "mha"])
def test_padding_changes_no_embedding(encoder: str) -> None:
    """The same captions framed at 10 positions and padded out to 24 embed identically in both text encoders."""
    from nanovlm.models.text import AttentionTextEncoder, MeanPoolTextEncoder

    short = SubwordTokenizer.train(CAPTIONS, "bpe", 120, 10)
    tokens = short.encode_batch(CAPTIONS[:6])  # [6, 10], some padded already
    assert bool((padding_mask(tokens, short.pad_id).sum(1) < 10).any())
    torch.manual_seed(0)
    if encoder == "mean":
        model = MeanPoolTextEncoder(vocab_size=short.vocab_size, embed_dim=16, width=16, pad_id=short.pad_id)
    else:
        model = AttentionTextEncoder(vocab_size=short.vocab_size, embed_dim=16, width=16, max_len=24, pad_id=0)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(tokens), model(pad_to(tokens, 24, short.pad_id)), atol=1e-6)
        assert not torch.allclose(model(tokens), model(pad_to(tokens, 24, short.unk_id)), atol=1e-3)  # not vacuous


def test_padding_changes_no_likelihood() -> None:
    from nanovlm.models.decoder import TextDecoder, log_likelihood

    short = SubwordTokenizer.train(CAPTIONS, "bpe", 120, 10)
    tokens = short.encode_batch(CAPTIONS[:4])
    torch.manual_seed(0)
    decoder = TextDecoder(short.vocab_size, 8, 4, 16, width=16, max_len=24, pad_id=short.pad_id).eval()
    memory = torch.randn(4, 5, 16)  # [B, 1 + N, W]: what the decoder attends to
    with torch.no_grad():
        padded = log_likelihood(decoder, memory, pad_to(tokens, 24, short.pad_id))
        assert torch.allclose(log_likelihood(decoder, memory, tokens), padded, atol=1e-5)

"""Captioning objectives: a small transformer text decoder that writes an image's caption word by word.

`loss=cap` trains only the decoder's next-token cross-entropy (Cap/CapPa, Tschannen et al. 2023);
`loss=coca` adds it to CLIP's contrastive loss (CoCa, Yu et al. 2022). As with CLIP's temperature, the
objective owns its parameters: here the whole decoder, so choosing the loss is the whole change.

The decoder reads the image through the image encoder's token grid (`encode_with_tokens`: the ViT's patch
tokens, the CNN's 4x4 feature-map cells) plus the pooled embedding as one summary token. Besides training, it
serves three uses that share the functions below:
- generation: greedy decoding, optionally constrained to the words each caption slot can hold;
- scoring: a caption's log-likelihood given the image, the captioner's counterpart of a dual encoder's cosine,
  so retrieval ranks candidates with the same metric and the same tie rule;
- the teacher-forced loss itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.data import SEQ_LEN
from nanovlm.encoders.transformer import check_transformer_sizes, decoder_blocks
from nanovlm.losses import ClipLoss


class TextDecoder(nn.Module):
    """Token + learned positional embeddings, `depth` pre-norm decoder blocks (causal self-attention, then
    cross-attention to the image's memory tokens, then an MLP: torch's nn.TransformerDecoderLayer), a final
    LayerNorm and a linear head to the vocabulary. Position t's logits predict token t + 1.

    The memory is the image encoder's tokens [B, N, C] and its pooled embedding [B, D], each projected to the
    decoder's width, with a learned position per memory token (the CNN's cells carry no position of their own),
    then LayerNorm. The summary token also means every image-encoder parameter reaches the loss (DDP needs that).
    """

    def __init__(
        self,
        vocab_size: int,
        token_dim: int,
        num_tokens: int,
        embed_dim: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        max_len: int = SEQ_LEN,
    ) -> None:
        super().__init__()
        check_transformer_sizes("loss", width, depth, heads, mlp_ratio, dropout)
        self.embed = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.embed.weight, std=0.02)  # GPT-2's init, as in AttentionTextEncoder
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.token_proj = nn.Linear(token_dim, width)
        self.summary_proj = nn.Linear(embed_dim, width)
        self.memory_pos = nn.Parameter(torch.randn(1, 1 + num_tokens, width) * 0.02)
        self.memory_norm = nn.LayerNorm(width)
        self.blocks = decoder_blocks(width, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def memory(self, image_emb: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """What the decoder attends to: [B, 1 + N, W] from the embedding [B, D] and the tokens [B, N, C]."""
        summary = self.summary_proj(image_emb)[:, None]  # [B, 1, W]
        return self.memory_norm(torch.cat([summary, self.token_proj(image_tokens)], dim=1) + self.memory_pos)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, T, V] for tokens [B, T]; position t sees tokens 0..t and the whole memory."""
        length = tokens.shape[1]
        if length > self.pos_embed.shape[1]:
            raise ValueError(f"captions of {length} tokens exceed the decoder's max_len ({self.pos_embed.shape[1]})")
        x = self.embed(tokens) + self.pos_embed[:, :length]  # [B, T, W]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=x.dtype)
        x = self.blocks(x, memory, tgt_mask=causal, tgt_is_causal=True)  # [B, T, W]
        return self.head(self.norm(x))  # [B, T, V]


# --- Teacher forcing, scoring, generation -------------------------------------------------------------------------


def teacher_forced_loss(
    decoder: TextDecoder, memory: torch.Tensor, tokens: torch.Tensor, parallel: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy: the decoder reads tokens[:, :-1] (the true prefix, [CLS] first, whatever
    it would have predicted itself) and is scored on tokens[:, 1:].

    `parallel` [B] bool marks captions trained by parallel prediction (CapPa): their inputs are all [CLS], so
    every word must be read off the image alone, with no earlier word to lean on.
    """
    inputs = tokens[:, :-1]  # [B, T-1]
    if parallel is not None:
        inputs = torch.where(parallel[:, None], tokens[:, :1].expand_as(inputs), inputs)
    logits = decoder(inputs, memory)  # [B, T-1, V]
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def log_likelihood(decoder: TextDecoder, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(caption | image) [B]: the sum over the words after [CLS] of each word's log-probability."""
    log_probs = decoder(tokens[:, :-1], memory).log_softmax(dim=-1)  # [B, T-1, V]
    return log_probs.gather(2, tokens[:, 1:, None]).squeeze(2).sum(dim=1)  # [B]


def pair_log_likelihoods(
    decoder: TextDecoder, memory: torch.Tensor, tokens: torch.Tensor, max_pairs: int = 4096
) -> torch.Tensor:
    """[I, C] log-likelihood of every caption tokens[c] [C, T] given every image memory[i] [I, M, W].

    A dual encoder's score matrix is one matmul; here each (image, input) pair is a decoder pass. Causality
    makes that cheaper than it looks: every word's log-probability depends only on the words before it, so
    captions that share their input tokens[:, :-1] share one pass (the seed world's 243 captions have 27
    distinct inputs: 9x less work). Passes run in chunks of about `max_pairs` to bound memory.
    """
    inputs, caption_input = torch.unique(tokens[:, :-1], dim=0, return_inverse=True)  # [U, T-1], [C]
    targets = tokens[:, 1:]  # [C, T-1]
    images_per_chunk = max(1, max_pairs // len(inputs))
    rows = []
    for start in range(0, len(memory), images_per_chunk):
        chunk = memory[start : start + images_per_chunk]  # [i, M, W]
        pair_memory = chunk[:, None].expand(-1, len(inputs), -1, -1).flatten(0, 1)  # [i*U, M, W]
        pair_inputs = inputs[None].expand(len(chunk), -1, -1).flatten(0, 1)  # [i*U, T-1]
        log_probs = decoder(pair_inputs, pair_memory).log_softmax(dim=-1)  # [i*U, T-1, V]
        log_probs = log_probs.view(len(chunk), len(inputs), *log_probs.shape[1:])[:, caption_input]  # [i, C, T-1, V]
        index = targets[None, :, :, None].expand(len(chunk), -1, -1, 1)  # [i, C, T-1, 1]
        rows.append(log_probs.gather(3, index).squeeze(3).sum(dim=2))  # [i, C]
    return torch.cat(rows)  # [I, C]


def slot_vocabulary(captions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[T, V] bool: which words occur at each position among `captions` [N, T] (a world's whole gallery).

    This is the grammar constrained decoding keeps to: on the seed world, slot 1 holds a colour, slot 2 a shape,
    slot 3 a position. It is read from the captions themselves, so any world with fixed slots gets its own.
    """
    allowed = torch.zeros(captions.shape[1], vocab_size, dtype=torch.bool, device=captions.device)
    allowed[torch.arange(captions.shape[1], device=captions.device)[None].expand_as(captions), captions] = True
    return allowed


@torch.no_grad()
def greedy_decode(
    decoder: TextDecoder, memory: torch.Tensor, bos_id: int, length: int, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Captions [B, length] written one word at a time, each the argmax given the words written so far.

    Starts from [CLS] (`bos_id`). With `allowed` ([length, V] bool, see `slot_vocabulary`) the argmax at
    position t only ranges over the words slot t can hold, so every caption is well formed; without it any word
    of the vocabulary can come out anywhere. Captions here have a fixed length, so there is no end token.
    """
    tokens = torch.full((len(memory), 1), bos_id, dtype=torch.long, device=memory.device)  # [B, 1]
    for position in range(1, length):
        logits = decoder(tokens, memory)[:, -1]  # [B, V], the next word's logits
        if allowed is not None:
            logits = logits.masked_fill(~allowed[position], float("-inf"))
        tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)  # [B, position + 1]
    return tokens


@torch.no_grad()
def parallel_decode(
    decoder: TextDecoder, memory: torch.Tensor, bos_id: int, length: int, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Captions [B, length] with every word read off the image at once: the inputs are all [CLS], as in
    parallel-prediction training (loss.parallel_fraction), so no word is conditioned on another. One pass."""
    inputs = torch.full((len(memory), length - 1), bos_id, dtype=torch.long, device=memory.device)  # [B, T-1]
    logits = decoder(inputs, memory)  # [B, T-1, V]
    if allowed is not None:
        logits = logits.masked_fill(~allowed[1:], float("-inf"))
    return torch.cat([inputs[:, :1], logits.argmax(dim=-1)], dim=1)  # [B, T]


DECODERS = {"greedy": greedy_decode, "parallel": parallel_decode}


# --- The objectives ------------------------------------------------------------------------------------------------


SCORES = ("likelihood", "cosine")
RETRIEVAL = ("auto", True, False)
# Above this many (image, distinct caption input) decoder passes, ranking a whole gallery by likelihood is not done
# by default (loss.retrieval=auto, nanovlm.evaluate): the seed world needs 243 x 27, data=scenes 12,636 x 468.
MAX_LIKELIHOOD_PAIRS = 1_000_000


def likelihood_passes(num_images: int, tokens: torch.Tensor) -> int:
    """Decoder passes `pair_log_likelihoods` makes to score `num_images` images against captions `tokens` [C, T]."""
    return num_images * len(torch.unique(tokens[:, :-1], dim=0))


class CaptionLoss(nn.Module):
    """loss=cap: teacher-forced next-token cross-entropy of a TextDecoder that this objective owns.

    `vocab_size`, `token_dim`, `num_tokens` and `embed_dim` come from the world and the image encoder (see
    `nanovlm.captioner.build_captioner`); the yaml gives the decoder's sizes and `constrained`, whether
    generation keeps each slot to the words it can hold. A captioner has no text embedding, so it scores a
    caption by its log-likelihood (`score`). `retrieval` says whether validation ranks the whole gallery
    (val/R@*): by likelihood every (image, distinct caption input) pair is a decoder pass, and on data=scenes that
    is 12,636 x 468 per validation. "auto" (the default) ranks when that is at most MAX_LIKELIHOOD_PAIRS passes
    (or the score is cosine) and otherwise says so in one line; true always ranks, false never (val/R@* nan).
    Hard-negative accuracy and the caption metrics are computed either way.
    """

    score = "likelihood"
    uses_text_encoder = False  # the Captioner is built without one

    def __init__(
        self,
        vocab_size: int,
        token_dim: int,
        num_tokens: int,
        embed_dim: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        constrained: bool = True,
        parallel_fraction: float = 0.0,
        retrieval: bool | str = "auto",
        decoding: str = "greedy",
        max_len: int = SEQ_LEN,
    ) -> None:
        super().__init__()
        if retrieval not in RETRIEVAL:
            raise ValueError(f"loss.retrieval must be one of auto, true, false, got {retrieval!r}")
        if not 0.0 <= parallel_fraction <= 1.0:
            raise ValueError(f"loss.parallel_fraction must be in [0, 1], got {parallel_fraction}")
        if decoding not in DECODERS:
            raise ValueError(f"loss.decoding must be one of {', '.join(DECODERS)}, got {decoding!r}")
        self.decode = DECODERS[decoding]
        self.decoder = TextDecoder(
            vocab_size, token_dim, num_tokens, embed_dim, width, depth, heads, mlp_ratio, dropout, max_len
        )
        self.parallel_fraction, self.retrieval = parallel_fraction, retrieval
        self.constrained = constrained

    def forward(
        self,
        image_emb: torch.Tensor,
        memory: torch.Tensor,
        tokens: torch.Tensor,
        text_emb: torch.Tensor | None,
        caption_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of a batch; `memory` is `self.decoder.memory(...)` of its images. `text_emb` and `caption_id`
        (each pair's caption, for a contrastive term's several true pairs) are unused here."""
        return self.caption_loss(memory, tokens)

    def caption_loss(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing; in training, a random `parallel_fraction` of the captions by parallel prediction."""
        parallel = None
        if self.training and self.parallel_fraction > 0:
            parallel = torch.rand(len(tokens), device=tokens.device) < self.parallel_fraction  # [B]
        return teacher_forced_loss(self.decoder, memory, tokens, parallel)

    def extra_log(self) -> dict[str, torch.Tensor]:
        return {}


class CocaLoss(CaptionLoss):
    """loss=coca: `contrastive_weight` x CLIP's loss on the pooled embeddings + `caption_weight` x the
    captioning loss. The contrastive part is `ClipLoss` itself (temperature and all). CoCa's paper weighs
    captioning 2 : 1; here both default to 1 (see docs/captioning.md).

    `score` picks how candidates are ranked: "cosine" of the contrastive embeddings (CoCa's retrieval), or
    "likelihood" under the decoder (as loss=cap does).
    """

    def __init__(
        self,
        vocab_size: int,
        token_dim: int,
        num_tokens: int,
        embed_dim: int,
        contrastive_weight: float = 1.0,
        caption_weight: float = 1.0,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        score: str = "cosine",
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        constrained: bool = True,
        parallel_fraction: float = 0.0,
        retrieval: bool | str = "auto",
        decoding: str = "greedy",
        max_len: int = SEQ_LEN,
    ) -> None:
        super().__init__(
            vocab_size, token_dim, num_tokens, embed_dim, width, depth, heads, mlp_ratio, dropout, constrained,
            parallel_fraction, retrieval, decoding, max_len,
        )  # fmt: skip
        if contrastive_weight < 0 or caption_weight < 0 or contrastive_weight + caption_weight == 0:
            raise ValueError(
                "loss.contrastive_weight and loss.caption_weight must be >= 0 and not both 0, "
                f"got {contrastive_weight} and {caption_weight}"
            )
        if score not in SCORES:
            raise ValueError(f"loss.score must be one of {', '.join(SCORES)}, got {score!r}")
        self.contrastive = ClipLoss(temperature, learnable_temperature)
        self.uses_text_encoder = True
        self.contrastive_weight, self.caption_weight, self.score = contrastive_weight, caption_weight, score

    def forward(
        self,
        image_emb: torch.Tensor,
        memory: torch.Tensor,
        tokens: torch.Tensor,
        text_emb: torch.Tensor | None,
        caption_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert text_emb is not None, "loss=coca needs the text encoder's embeddings"
        captioning = self.caption_loss(memory, tokens)
        contrastive = self.contrastive(image_emb, text_emb, caption_id=caption_id)
        return self.contrastive_weight * contrastive + self.caption_weight * captioning

    def extra_log(self) -> dict[str, torch.Tensor]:
        return self.contrastive.extra_log()

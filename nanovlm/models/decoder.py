"""The captioners' text decoder, and what it computes: a caption's log-likelihood given an image.

The decoder reads the image through the image encoder's token grid (`encode_with_tokens`: the ViT's patch
tokens, the CNN's 4x4 feature-map cells) plus the pooled embedding as one summary token. Its log-likelihood is the
captioner's counterpart of a dual encoder's cosine, so retrieval ranks candidates with the same metric and the
same tie rule. Writing captions with it is nanovlm.models.decoding; training it is nanovlm.objectives.captioning.
"""

from __future__ import annotations

import torch
from torch import nn

from nanovlm.data.shapes import SEQ_LEN
from nanovlm.data.tokenizer import padding_mask
from nanovlm.models.transformer import check_transformer_sizes, decoder_blocks


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
        max_len: int = SEQ_LEN,  # positions: the seed world's caption length; Captioner.from_config passes the world's
        pad_id: int | None = None,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id  # padded targets add nothing to a caption's loss or likelihood
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
        """Next-token logits [B, T, V] for tokens [B, T]; position t sees tokens 0..t and the whole memory.

        Texts are right-padded, so causality alone keeps every real position from seeing padding: no key padding
        mask is needed, and a padded position's own logits are never scored (`target_mask`)."""
        length = tokens.shape[1]
        if length > self.pos_embed.shape[1]:
            raise ValueError(f"captions of {length} tokens exceed the decoder's max_len ({self.pos_embed.shape[1]})")
        x = self.embed(tokens) + self.pos_embed[:, :length]  # [B, T, W]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=x.dtype)
        x = self.blocks(x, memory, tgt_mask=causal, tgt_is_causal=True)  # [B, T, W]
        return self.head(self.norm(x))  # [B, T, V]


def target_mask(decoder: TextDecoder, targets: torch.Tensor) -> torch.Tensor | None:
    """[..., T-1] bool: the targets that are real tokens (EOS included: ending is part of a caption); None when
    the decoder has no padding id."""
    return padding_mask(targets, decoder.pad_id)


def _sum_real(token_log_probs: torch.Tensor, targets: torch.Tensor, decoder: TextDecoder) -> torch.Tensor:
    mask = target_mask(decoder, targets)
    return (token_log_probs if mask is None else token_log_probs * mask).sum(dim=-1)


def log_likelihood(decoder: TextDecoder, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(caption | image) [B]: the sum over the tokens after [CLS] (up to EOS, padding left out) of each
    token's log-probability."""
    log_probs = decoder(tokens[:, :-1], memory).log_softmax(dim=-1)  # [B, T-1, V]
    return _sum_real(log_probs.gather(2, tokens[:, 1:, None]).squeeze(2), tokens[:, 1:], decoder)  # [B]


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
        token_log_probs = log_probs.gather(3, index).squeeze(3)  # [i, C, T-1]
        rows.append(_sum_real(token_log_probs, targets[None].expand(len(chunk), -1, -1), decoder))  # [i, C]
    return torch.cat(rows)  # [I, C]


def likelihood_passes(num_images: int, tokens: torch.Tensor) -> int:
    """Decoder passes `pair_log_likelihoods` makes to score `num_images` images against captions `tokens` [C, T]."""
    return num_images * len(torch.unique(tokens[:, :-1], dim=0))

"""Writing captions with a TextDecoder: word by word (greedy), or every word from the image at once (parallel).

`slot_vocabulary` reads from a world's captions which words each position can hold, so decoding can keep every
slot to them (loss.constrained) without naming any world's grammar.
"""

from __future__ import annotations

import torch

from nanovlm.models.decoder import TextDecoder


def slot_vocabulary(captions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[T, V] bool: which words occur at each position among `captions` [N, T] (a world's whole gallery).

    This is the grammar constrained decoding keeps to: on the seed world, slot 1 holds a colour, slot 2 a shape,
    slot 3 a position. It is read from the captions themselves, so any world with fixed slots gets its own.
    """
    allowed = torch.zeros(captions.shape[1], vocab_size, dtype=torch.bool, device=captions.device)
    allowed[torch.arange(captions.shape[1], device=captions.device)[None].expand_as(captions), captions] = True
    return allowed


def end_at_eos(tokens: torch.Tensor, eos_id: int | None, pad_id: int | None) -> torch.Tensor:
    """`tokens` [B, T] with everything after each row's first EOS (at position >= 1) set to PAD: a caption ends
    where its writer said so. Unchanged without an end token (fixed-length captions)."""
    if eos_id is None:
        return tokens
    ended = (tokens == eos_id).cumsum(dim=1) - (tokens == eos_id).long() > 0  # [B, T]: strictly after the first EOS
    return tokens.masked_fill(ended, eos_id if pad_id is None else pad_id)


@torch.no_grad()
def greedy_decode(
    decoder: TextDecoder,
    memory: torch.Tensor,
    bos_id: int,
    length: int,
    allowed: torch.Tensor | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Captions [B, length] written one word at a time, each the argmax given the words written so far.

    Starts from [CLS] (`bos_id`). With `allowed` ([length, V] bool, see `slot_vocabulary`) the argmax at
    position t only ranges over the words slot t can hold, so every caption is well formed; without it any word
    of the vocabulary can come out anywhere. With an end token (`eos_id`), a caption stops at its first EOS (the
    rest is PAD) and writing stops once every caption has ended; the closed worlds' captions have a fixed length.
    """
    tokens = torch.full((len(memory), 1), bos_id, dtype=torch.long, device=memory.device)  # [B, 1]
    for position in range(1, length):
        logits = decoder(tokens, memory)[:, -1]  # [B, V], the next word's logits
        if allowed is not None:
            logits = logits.masked_fill(~allowed[position], float("-inf"))
        tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)  # [B, position + 1]
        if eos_id is not None and bool((tokens[:, 1:] == eos_id).any(dim=1).all()):
            filler = eos_id if pad_id is None else pad_id
            tokens = torch.cat([tokens, tokens.new_full((len(tokens), length - tokens.shape[1]), filler)], dim=1)
            break
    return end_at_eos(tokens, eos_id, pad_id)


@torch.no_grad()
def parallel_decode(
    decoder: TextDecoder,
    memory: torch.Tensor,
    bos_id: int,
    length: int,
    allowed: torch.Tensor | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Captions [B, length] with every word read off the image at once: the inputs are all [CLS], as in
    parallel-prediction training (loss.parallel_fraction), so no word is conditioned on another. One pass."""
    inputs = torch.full((len(memory), length - 1), bos_id, dtype=torch.long, device=memory.device)  # [B, T-1]
    logits = decoder(inputs, memory)  # [B, T-1, V]
    if allowed is not None:
        logits = logits.masked_fill(~allowed[1:], float("-inf"))
    return end_at_eos(torch.cat([inputs[:, :1], logits.argmax(dim=-1)], dim=1), eos_id, pad_id)  # [B, T]


DECODERS = {"greedy": greedy_decode, "parallel": parallel_decode}

"""The fusion designs a VQA model can answer with (`fusion=`), one module each, all reading the image through the
image encoder's `encode_with_tokens` (pooled embedding [B, D], token grid [B, N, C]) and returning answer logits
[B, len(ANSWERS)]:

- early.py   EarlyFusion: projected image tokens and question tokens in one transformer, prefix-LM (PaliGemma);
- cross.py   CrossFusion: the captioners' TextDecoder reads the question as its prefix and cross-attends to the
             image tokens (Flamingo / the Cap decoder), the answer is its next token;
- late.py    LateFusion: the dual encoder's pooled image and question embeddings, concatenated, through an MLP;
- pairs.py   PairsFusion: a Relation Network (Santoro et al. 2017): an MLP over every pair of coordinate-tagged
             image tokens with the question, averaged, then an answer MLP;
- film.py    FiLMFusion: FiLM (Perez et al. 2018): the question scales and shifts every channel of residual conv
             blocks over the coordinate-tagged token map, max-pooled, then an answer MLP;
- blind.py   BlindFusion: the question embedding alone through the same MLP (the language-prior baseline).

`uses_image` says whether a design reads the picture at all (blind does not: the task then never encodes it).
"""

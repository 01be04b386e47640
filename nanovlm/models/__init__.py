"""The networks: image encoders, text encoders, the transformer blocks they share, the captioners' text decoder.

Encoders share one contract: a batch in, L2-normalised embeddings [B, D] out (`image`, `text`); image encoders
also expose their token grid for a decoder to attend to. `decoder` is the text decoder and what it computes
(a caption's log-likelihood); `decoding` writes captions with it. Nothing here knows about losses or Lightning.
"""

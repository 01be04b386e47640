"""nanovlm: tiny contrastive vision-language models (CLIP / SigLIP dual encoders) on coloured shapes."""

from nanovlm.data import ShapesDataModule
from nanovlm.module import DualEncoder
from nanovlm.training import train

__all__ = ["DualEncoder", "ShapesDataModule", "train"]

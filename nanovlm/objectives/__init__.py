"""What a model is trained to do: each objective is one `loss` option and owns its parameters.

- `contrastive`: CLIP's and SigLIP's losses (several true pairs, hard negatives);
- `gather`: the cross-process gather the contrastive losses run under DDP;
- `captioning`: Cap, CapPa and CoCa, whose decoder (nanovlm.models.decoder) the objective owns.
"""

"""The LightningModules, one per task, chosen by the `model` config group (conf/model/<task>.yaml's `_target_`).

- `dual_encoder`: `DualEncoder`, two encoders under a contrastive objective;
- `captioner`: `Captioner`, an image encoder and an objective that writes captions.
"""

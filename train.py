"""Train a dual encoder: `python train.py encoder=cnn loss=clip trainer.max_epochs=30`."""

import gc

import hydra
from omegaconf import DictConfig

from nanovlm.config import CONFIG_DIR, cli_errors


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns val R@1 (mean of both directions), the number sweepers optimise."""
    # torch and Lightning load here, in the job: a parallel launcher's main process never needs them.
    from nanovlm.training import train

    if gc.get_freeze_count() == 0:  # once per process (a sweep runs several jobs in one process or worker)
        # The ~10^6 objects of torch and Lightning live as long as the process. Frozen, the garbage collector skips
        # them, and Python's shutdown (here and in every joblib worker) need not walk them (docs/performance.md).
        gc.freeze()
    with cli_errors():  # bad config: one line, exit 2; NaN loss: one line, exit 1
        return train(cfg)["val/R@1"]


if __name__ == "__main__":
    with cli_errors():  # unknown option or key: one line, exit 2 (and a sweep's failed job)
        main()

"""Train a dual encoder: `python train.py encoder=cnn loss=clip trainer.max_epochs=30`."""

import gc

import hydra
from omegaconf import DictConfig

from nanovlm.run import cli
from nanovlm.run.config import CONFIG_DIR, check_fixed_keys


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns val R@1 (mean of both directions), the number sweepers optimise."""
    # Bad config: one line, exit 2; NaN loss: one line, exit 1; SIGINT/SIGTERM: exit 130/143.
    with cli.job_errors(cfg), cli.signals_raise():
        check_fixed_keys(cfg)  # before torch and Lightning load: a typo costs Hydra's start-up only
        from nanovlm.run import tracking

        # W&B loads on a thread while torch and Lightning do, and its service starts meanwhile; begun before torch,
        # W&B's own imports run while sys.modules is small, which makes them cheaper (docs/performance.md).
        tracking.warm_up(cfg)
        from nanovlm.data.index import preread

        preread(cfg.data)  # a disk dataset's rows and image files, also before torch: bad data costs seconds
        from nanovlm.run import preflight  # torch, not yet Lightning (~3x as long to import)

        preflight.check(cfg)  # no GPU, too many devices, a learning rate torch refuses
        # Lightning loads here, in the job: a parallel launcher's main process never needs it.
        from nanovlm.run.training import train

        if gc.get_freeze_count() == 0:  # once per process (a sweep runs several jobs in one process or worker)
            # The ~10^6 objects of torch and Lightning live as long as the process. Frozen, the garbage collector
            # skips them, and Python's shutdown (here and in every joblib worker) need not walk them
            # (docs/performance.md).
            gc.freeze()
        return train(cfg).get("val/R@1", float("nan"))  # NaN for a task that does not rank (model=vqa)


if __name__ == "__main__":
    with cli.hydra_errors():  # unknown option or key, a run dir that cannot be made: one line, exit 2
        main()

"""`python -m nanovlm.export data=<world> format=csv|coco|wds out=DIR [shard_size=N] [data.key=value ...]`.

`format`, `out` and `shard_size` are this command's own keys; everything else is a Hydra override of the training
config, so `data=scenes data.split=random` exports exactly the split `python train.py data=scenes
data.split=random` trains on (nanovlm/export/world.py). Bad input is one line and exit 2, as for train.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

OWN_KEYS = ("format", "out", "shard_size")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in OWN_KEYS and "=" in a}
    overrides = [a for a in argv if a.split("=", 1)[0] not in OWN_KEYS]
    try:
        if "format" not in own or "out" not in own:
            raise ValueError("usage: python -m nanovlm.export data=<world> format=csv|coco|wds out=DIR")
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException
        from hydra.utils import instantiate

        from nanovlm.export.world import export
        from nanovlm.run.cli import one_line
        from nanovlm.run.config import CONFIG_DIR

        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose("config", overrides=overrides)
            world = instantiate(cfg.data)
        except HydraException as error:
            raise ValueError(one_line(error)) from None
        if not hasattr(world, "caption_of"):
            raise ValueError(f"data={cfg.data._target_}: only a synthetic world (data=shapes, scenes) is exported")
        out = Path(own["out"])
        command = export(world, own["format"], out, int(own.get("shard_size", 1000)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(world.images)} images to {out}/; train on them with:\n  python train.py {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run and compare sweeps: `python sweep.py sweep=temperature_dim [launcher=joblib] [key=value ...]`.

`python sweep.py --collect <sweep dir>` rebuilds the table of an existing sweep without training.
"""

import argparse
import sys
from pathlib import Path

import yaml

from nanovlm.run import cli
from nanovlm.run.config import ConfigError
from nanovlm.sweeps.report import report
from nanovlm.sweeps.spec import available_specs, load_spec, run, wandb_sweep_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="sweep=<name> (required), launcher=basic|joblib, then overrides")
    parser.add_argument("--collect", type=Path, help="tabulate an existing multirun dir instead of running")
    parser.add_argument("--no-wandb", action="store_true", help="skip the W&B sweep-summary run")
    parser.add_argument("--wandb-sweep", action="store_true", help="write a W&B sweep YAML instead of running")
    opts = parser.parse_intermixed_args()  # overrides may come before or after the flags
    named = dict(a.split("=", 1) for a in opts.args if a.split("=", 1)[0] in ("sweep", "launcher"))
    if opts.collect:  # with sweep=<name>, tabulate with that spec instead of the one saved in the dir
        spec = load_spec(named["sweep"]) if "sweep" in named else None
        return 0 if not report(opts.collect, spec, use_wandb=not opts.no_wandb)["failed"] else 1
    extra = [a for a in opts.args if a.split("=", 1)[0] not in ("sweep", "launcher")]
    if "sweep" not in named:
        parser.error(f"say which sweep: sweep=<name>, one of {', '.join(available_specs())}")
    spec = load_spec(named["sweep"])
    train_py = Path(__file__).with_name("train.py")
    if opts.wandb_sweep:
        path = Path(f"wandb_sweep_{spec.name}.yaml")
        path.write_text(yaml.safe_dump(wandb_sweep_config(spec, train_py), sort_keys=False))
        print(f"wrote {path}; when online: wandb sweep {path}, then wandb agent <the sweep id it prints>")
        return 0
    sweep_dir, code, seconds = run(spec, train_py, extra, named.get("launcher"))
    print(f"sweep wall time {seconds:.1f} s (train.py exit code {code})")
    if not any(d.name.isdigit() for d in sweep_dir.iterdir()):  # train.py -m stopped before any job, and said why
        return code or cli.RUN_FAILED
    result = report(sweep_dir, spec, use_wandb=not opts.no_wandb)
    return 1 if result["failed"] or code != 0 else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as error:  # an unknown sweep, a dir that is not a sweep: one line, exit 2
        cli.fail(str(error), cli.BAD_INPUT)

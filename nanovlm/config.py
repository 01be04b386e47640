"""Where the Hydra configs live, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _find_config_dir() -> Path:
    """`conf/` beside the package in a checkout (editable install); `nanovlm/conf` in a wheel."""
    for candidate in (_PACKAGE_DIR.parent / "conf", _PACKAGE_DIR / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"nanovlm's Hydra configs (config.yaml) are missing beside {_PACKAGE_DIR}")


CONFIG_DIR = _find_config_dir()

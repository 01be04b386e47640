"""Print pip constraints that pin every dependency of pyproject.toml to its lowest allowed version.

`make test-min` installs nanovlm[dev] under these constraints, so the floors written in pyproject.toml are the
versions the suite runs against: a floor that no longer works fails CI instead of a user's install. Only direct
dependencies are pinned (pip resolves the rest to what it would give a user); a requirement without a `>=`
floor is left free.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*[^;]*?>=\s*([^,;\s]+)")


def floors(pyproject: Path) -> dict[str, str]:
    """{package: lowest version} for the project's dependencies and all its optional extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match:
            name, version = match.group(1).lower(), match.group(2)
            if pins.setdefault(name, version) != version:
                sys.exit(f"error: {name} has two floors in pyproject.toml: {pins[name]} and {version}")
    return pins


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml"
    for name, version in floors(path).items():
        print(f"{name}=={version}")

"""The installed HTTP stack (W&B sends the API key through it) is above its known vulnerabilities.

The floors are those of ``pyproject.toml``; ``docs/dependencies.md`` names the advisories. An old
virtualenv fails here until ``make install`` (or ``pip install -e ".[pipeline,dev]"``) upgrades it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.version import Version

#: package -> oldest release without the advisories listed in docs/dependencies.md
FLOORS = {"requests": "2.32.4", "urllib3": "2.6", "idna": "3.7"}


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_installed_release_is_at_least_the_floor(package):
    installed = Version(version(package))
    assert installed >= Version(FLOORS[package]), (
        f"{package} {installed} is installed; {FLOORS[package]} or later fixes known "
        f"vulnerabilities: run make install"
    )


def test_torchattacks_is_not_installed():
    # It pins requests~=2.25.1 and would drag the vulnerable release back in.
    with pytest.raises(PackageNotFoundError):
        version("torchattacks")

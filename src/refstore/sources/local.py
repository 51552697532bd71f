"""Granules in a local folder, or matching a glob such as ``incoming/**/*.nc``."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refstore.errors import SourceError
from refstore.models import Granule
from refstore.sources.base import ContainerSpec

if TYPE_CHECKING:
    from refstore.config import Config

__all__ = ["LocalSource"]

_GLOB_CHARS = set("*?[")
DEFAULT_PATTERNS = ("*.nc", "*.nc4", "*.h5", "*.hdf5", "*.he5")


def split_glob(url: str) -> tuple[Path, str | None]:
    """Split ``/data/in/**/*.nc`` into the folder before the first wildcard and the rest."""
    parts = Path(url).parts
    for i, part in enumerate(parts):
        if _GLOB_CHARS & set(part):
            return Path(*parts[:i]), str(Path(*parts[i:]))
    return Path(url), None


@dataclass(frozen=True, slots=True)
class LocalSource:
    """Files on the local file system.

    Parameters
    ----------
    url
        An absolute folder (all NetCDF/HDF5 files directly in it) or glob.
    """

    url: str

    @classmethod
    def from_config(cls, config: Config) -> LocalSource:
        """Build from ``[source] url`` (already resolved to an absolute path)."""
        return cls(url=config.source_url.removeprefix("file://"))

    @property
    def root(self) -> Path:
        """The folder that every granule lies under."""
        return split_glob(self.url)[0]

    def discover(self) -> Iterator[Granule]:
        """List the matching files with size and modification time as the revision."""
        root, pattern = split_glob(self.url)
        if not root.is_dir():
            raise SourceError(
                f"Source folder {root} does not exist.",
                "Check [source] url in refstore.toml (relative paths start at its folder).",
            )
        if pattern is None:
            paths = sorted({p for pat in DEFAULT_PATTERNS for p in root.glob(pat)})
        else:
            paths = sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True))
        for path in paths:
            if not path.is_file() or path.name.startswith("."):
                continue  # hidden names are partial downloads / temp files
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            modified = datetime.fromtimestamp(st.st_mtime, UTC).isoformat()
            yield Granule(
                key=path.relative_to(root).as_posix(),
                url=path.resolve().as_uri(),
                revision=f"{st.st_size}-{st.st_mtime_ns}",
                size=st.st_size,
                modified=modified,
            )

    def registry(self) -> Any:
        """A registry that reads ``file://`` URLs with obstore's LocalStore."""
        from obspec_utils.registry import ObjectStoreRegistry
        from obstore.store import LocalStore

        return ObjectStoreRegistry({"file://": LocalStore()})

    def container(self) -> ContainerSpec:
        """A ``file://`` container over the source folder."""
        prefix = self.root.resolve().as_uri().rstrip("/") + "/"
        return ContainerSpec(url_prefix=prefix, kind="local")

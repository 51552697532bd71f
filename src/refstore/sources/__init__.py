"""Granule sources: one module per kind, found through :func:`source_for`."""

from refstore.sources.base import ContainerSpec, Source, source_for

__all__ = ["ContainerSpec", "Source", "source_for"]

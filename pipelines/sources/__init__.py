"""Source adapters: one per dataset layout, all implementing ``pipelines.sources.base.Source``."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.sources.base import EventItem, Listing, Source, StaticItem, StaticItems
from pipelines.sources.builtin import BuiltinSource
from pipelines.sources.cifar10dvs import CIFAR10DVSSource
from pipelines.sources.dvsgesture import DVSGestureSource
from pipelines.sources.folder import FolderSource
from pipelines.sources.ncaltech101 import NCaltech101Source
from pipelines.sources.nmnist import NMNISTSource

#: name -> factory; keyword options go to the adapter's dataclass (split fractions, builtin size...)
SOURCES: dict[str, Callable[..., Source]] = {
    "nmnist": NMNISTSource,
    "cifar10dvs": CIFAR10DVSSource,
    "ncaltech101": NCaltech101Source,
    "dvsgesture": DVSGestureSource,
    "folder": FolderSource,
    "builtin": BuiltinSource,
}


def get_source(name: str, **options: object) -> Source:
    """The adapter called ``name``; ``options`` are its dataclass fields (for example ``seed``)."""
    try:
        factory = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(sorted(SOURCES))}") from None
    return factory(**options)


__all__ = ["SOURCES", "EventItem", "Listing", "Source", "StaticItem", "StaticItems", "get_source"]

"""Readers that turn published benchmark layouts into :class:`~geofuse.data.patchset.PatchSet`."""

from geofuse.data.datasets.so2sat_pop import (
    DEFAULT_CLASS_BINS,
    assign_so2sat_splits,
    bin_classes,
    load_so2sat_pop,
    tabular_columns,
)

__all__ = [
    "DEFAULT_CLASS_BINS",
    "assign_so2sat_splits",
    "bin_classes",
    "load_so2sat_pop",
    "tabular_columns",
]

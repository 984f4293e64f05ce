"""BigEarthNet's label nomenclatures as data, and JSON label lists -> multi-hot rows.

- :data:`LABELS_43`: the 43 CORINE Land Cover level-3 classes that occur in BigEarthNet, in
  the official order (``original_labels`` of the BigEarthNet label-index file: CORINE code
  order, without "Glaciers and perpetual snow").
- :data:`LABELS_19`: the 19-class nomenclature of Sumbul et al. 2020 (BigEarthNet-MM), in
  its official order. :data:`TO_19` maps each 43-class name to its 19-class name, or to
  ``None`` for the 11 classes that have no counterpart and are dropped (they cannot be
  recognised from a 10-60 m patch: airports, roads, dump sites, ...).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofuse.errors import LabelError

LABELS_43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

LABELS_19: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

#: 19-class name -> the 43-class names it merges (Sumbul et al. 2020, Table 1).
_MERGED: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": ("Vineyards", "Fruit trees and berry plantations", "Olive groves",
                        "Annual crops associated with permanent crops"),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    LABELS_19[6]: (LABELS_43[20],),  # "Land principally occupied by agriculture, ..."
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland",
                                                       "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland",
                                                       "Sclerophyllous vegetation"),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}

#: 43-class name -> its 19-class name, ``None`` for the 11 classes without one.
TO_19: dict[str, str | None] = {
    name: next((new for new, olds in _MERGED.items() if name in olds), None)
    for name in LABELS_43
}

NOMENCLATURES: dict[int, tuple[str, ...]] = {19: LABELS_19, 43: LABELS_43}


def class_names(nomenclature: int) -> list[str]:
    """The class names of the 19- or 43-class nomenclature, in the official order."""
    return list(NOMENCLATURES[nomenclature])


def multi_hot(labels: Sequence[str], nomenclature: int, source: Path) -> np.ndarray:
    """uint8 (K,) row of a patch's 43-class JSON labels over the chosen nomenclature.

    Args:
        labels: the ``labels`` list of a ``*_labels_metadata.json`` (43-class CORINE names).
        nomenclature: 19 (Sumbul et al. 2020; the 11 unmapped classes are ignored) or 43.
        source: the JSON file, for the error message.

    Raises:
        LabelError: a name that is not one of the 43 BigEarthNet class names.
    """
    names = NOMENCLATURES[nomenclature]
    row = np.zeros(len(names), dtype=np.uint8)
    for label in labels:
        if label not in TO_19:
            close = difflib.get_close_matches(str(label), LABELS_43, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LabelError(f"{str(source)!r}: unknown label {label!r}{hint}; BigEarthNet "
                             "labels are the 43 CORINE level-3 names (e.g. 'Pastures', "
                             "'Water bodies'); fix the name in that file")
        target = label if nomenclature == 43 else TO_19[label]
        if target is not None:
            row[names.index(target)] = 1
    return row

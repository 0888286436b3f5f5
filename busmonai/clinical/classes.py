"""The class vocabulary, defined once.

- :data:`TUMOR_CLASSES`: the tumor types, in label order (``label`` 0 benign, 1 malignant).
- :data:`IMAGE_CLASSES`: BUSI's image classes: the tumor types and ``normal`` (no lesion).
- :data:`UNTYPED_TUMOR`: a lesion whose type its dataset does not give (STU, a folder dataset
  without labels).
- :data:`LESION_CLASSES`: the classes whose images carry a lesion mask.
- :data:`ALL_CLASSES`: every class a prepared datalist may hold.
"""

from __future__ import annotations

TUMOR_CLASSES: tuple[str, ...] = ("benign", "malignant")
NORMAL = "normal"
UNTYPED_TUMOR = "tumor"
IMAGE_CLASSES: tuple[str, ...] = (*TUMOR_CLASSES, NORMAL)
LESION_CLASSES: tuple[str, ...] = (*TUMOR_CLASSES, UNTYPED_TUMOR)
ALL_CLASSES: tuple[str, ...] = (*IMAGE_CLASSES, UNTYPED_TUMOR)

"""busmonai's MONAI Label app: MONAI Label's own ``monaibundle`` sample app, plus an input check.

The app class is the sample app's ``MyApp``, loaded unchanged from the installed ``monailabel``
wheel (``<venv>/monailabel/sample-apps/monaibundle/main.py``), so bundles are found, served and
trained exactly as there. It adds one thing: an infer request for an image that is not in the
datastore answers HTTP 404, and one for a file that is not a readable image HTTP 415, each with a
message, where MONAI Label 0.8.5 itself answers every failed inference with HTTP 500.

Serve it like the sample app (see docs/monai_label.md): copy this folder, export the bundle into
its ``model/`` folder, then ``monailabel start_server --app <copy> --studies ... --conf models
bus_tumor_segmentation --conf sam2 false``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import monailabel
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from PIL import Image, UnidentifiedImageError


def _sample_app_main() -> Path:
    """The ``main.py`` of the ``monaibundle`` sample app that ships with the monailabel wheel."""
    candidates = [Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle" / "main.py",
                  Path(monailabel.__file__).resolve().parent.parent / "sample-apps" / "monaibundle" / "main.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"MONAI Label's monaibundle sample app not found in {[str(c) for c in candidates]}; "
                            "install monailabel 0.8.5 (pip install -e '.[label]')")


_spec = importlib.util.spec_from_file_location("monaibundle_sample_main", _sample_app_main())
_sample = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_sample)  # type: ignore[union-attr]


class BUSApp(_sample.MyApp, MONAILabelApp):  # type: ignore[misc, name-defined]
    """The ``monaibundle`` sample app with a 4xx answer for requests that name no readable image
    (``MONAILabelApp`` is named again because MONAI Label finds the app by its direct bases)."""

    def infer(self, request: dict[str, Any], datastore: Any = None) -> Any:
        image = request.get("image")
        if isinstance(image, str) and image:
            path = image if os.path.exists(image) else None
            if path is None:
                try:
                    path = (datastore or self.datastore()).get_image_uri(image)
                except Exception:  # noqa: BLE001 - datastores raise different types for unknown ids
                    path = None
            if not path or not os.path.exists(path):
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore; "
                                                            "upload it with PUT /datastore/ first")
            try:
                with Image.open(path) as opened:
                    opened.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                raise HTTPException(status_code=415, detail=f"image {image!r} is not a readable image ({err}); "
                                                            "the BUS bundles take PNG or JPEG images") from err
        return super().infer(request, datastore)

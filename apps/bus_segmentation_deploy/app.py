"""MONAI Deploy App SDK (4.0) application running the exported busmonai segmentation bundle on PNGs.

Graph: ``PNGImageLoaderOperator`` -> ``MonaiBundleInferenceOperator`` -> ``MaskPNGWriterOperator``.

The bundle is the TorchScript written by ``python -m monai.bundle ckpt_export`` with
``--meta_file configs/metadata.json --config_file configs/inference.json``: the operator reads the network
I/O from the embedded ``metadata.json`` (input ``image``, output ``pred``) and the ``preprocessing``,
``inferer`` and ``postprocessing`` of the embedded ``inference.json``, dropping ``LoadImaged`` and
``SaveImaged``. The loader therefore reproduces ``LoadImaged(reader=PILReader, image_only=False)``: it
hands over MONAI's array (width, height[, channels]) with MONAI's metadata, so the bundle's own
``Invertd`` maps the prediction back to the input's size. The writer saves ``<name>_mask.png``
(0 background, 255 tumour, the input's width and height).

Run (the SDK's standard flags; ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``
are the fallbacks)::

    python apps/bus_segmentation_deploy/app.py -i IN.png -o OUT_DIR -m MODEL.ts

``-i`` may be one image or a folder of images (every ``*.png``/``*.jpg``/``*.bmp`` in it, not recursive).
Bad input (a missing/unreadable image, a model file that is not an exported bundle) is reported on
stderr before the graph starts and the process exits with status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import zipfile
from pathlib import Path

# Holoscan warns about the default 8 MB stack; harmless for this small graph.
os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")

import numpy as np  # noqa: E402

from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import AppContext, Application, Fragment, Image, IOType, Operator, OperatorSpec  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import (  # noqa: E402
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INPUT_NAME = "image"  # metadata.json network_data_format.inputs
OUTPUT_NAME = "pred"  # metadata.json network_data_format.outputs
REQUIRED_CONFIG = "inference"


class DeployInputError(Exception):
    """Bad input files for the app (reported without a traceback)."""


def list_images(path: Path) -> list[Path]:
    """The image files named by ``-i``: the file itself, or the images directly inside the folder."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DeployInputError(f"{path}: input folder has no image files ({', '.join(IMAGE_SUFFIXES)})")
    else:
        raise DeployInputError(f"{path}: input does not exist")
    from PIL import Image as PILImage, UnidentifiedImageError

    for f in files:
        try:
            with PILImage.open(f) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DeployInputError(f"{f}: not a readable image ({type(exc).__name__}: {exc})") from None
    return files


def check_bundle(model_path: Path) -> Path:
    """Check that ``model_path`` is an exported bundle TorchScript carrying metadata.json and inference.json.

    MonaiBundleInferenceOperator otherwise fails deep inside the graph ("Failed to extract content for
    these config(s): ['inference']") or silently with empty metadata.
    """
    model_path = Path(model_path)
    if model_path.is_dir():  # MAP layout: a models folder holding one TorchScript
        candidates = sorted(model_path.glob("*.ts")) or sorted(model_path.glob("*/*.ts"))
        if len(candidates) != 1:
            raise DeployInputError(f"{model_path}: expected exactly one exported bundle *.ts, found {len(candidates)}")
        model_path = candidates[0]
    if not model_path.is_file():
        raise DeployInputError(f"{model_path}: model file does not exist")
    hint = (
        "export it with: python -m monai.bundle ckpt_export network_def --filepath B/models/model.ts "
        "--ckpt_file B/models/model.pt --key_in_ckpt model --meta_file B/configs/metadata.json "
        "--config_file B/configs/inference.json --bundle_root B"
    )
    try:
        with zipfile.ZipFile(model_path) as archive:
            names = archive.namelist()

            def read(stem: str) -> dict | None:
                hits = [n for n in names if n.endswith(f"/extra/{stem}.json")]
                return json.loads(archive.read(hits[0])) if hits else None

            meta, config = read("metadata"), read(REQUIRED_CONFIG)
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as exc:
        raise DeployInputError(f"{model_path}: not an exported TorchScript bundle ({exc}); {hint}") from None
    if not meta or "network_data_format" not in meta:
        raise DeployInputError(f"{model_path}: the TorchScript has no bundle metadata (metadata.json); {hint}")
    if config is None:
        raise DeployInputError(
            f"{model_path}: the TorchScript has no '{REQUIRED_CONFIG}.json' (inference config); {hint}"
        )
    inputs = meta["network_data_format"].get("inputs", {})
    outputs = meta["network_data_format"].get("outputs", {})
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise DeployInputError(
            f"{model_path}: bundle I/O is {list(inputs)} -> {list(outputs)}, this app needs "
            f"'{INPUT_NAME}' -> '{OUTPUT_NAME}'"
        )
    for key in ("preprocessing", "postprocessing"):
        if key not in config:
            raise DeployInputError(f"{model_path}: the embedded inference.json has no '{key}'")
    return model_path


class PNGImageLoaderOperator(Operator):
    """Loads one image per tick as the bundle's ``LoadImaged(reader="PILReader", image_only=False)`` would.

    Named output:
        image: ``Image`` holding MONAI's (W, H[, C]) array and its metadata (``original_channel_dim``,
        ``spatial_shape``, ``affine``, ``filename_or_obj``) for ``EnsureChannelFirstd`` and ``Invertd``.
    """

    def __init__(self, fragment: Fragment, *args, files: list[Path], **kwargs):
        self.files = [Path(f) for f in files]
        self._index = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output(INPUT_NAME)

    def compute(self, op_input, op_output, context):
        from monai.transforms import LoadImage

        path = self.files[self._index]
        self._index += 1
        data = LoadImage(reader="PILReader", image_only=False)(str(path))
        array, meta = data if isinstance(data, (tuple, list)) else (data, data.meta)
        meta = dict(meta)
        meta["filename_or_obj"] = str(path)
        logging.info(f"Loaded {path} as {tuple(array.shape)}")
        op_output.emit(Image(np.asarray(array), metadata=meta), INPUT_NAME)


class MaskPNGWriterOperator(Operator):
    """Writes the bundle's segmentation as ``<input stem>_mask.png``: 0 background, 255 tumour.

    Named input:
        pred: ``Image`` from MonaiBundleInferenceOperator, a (W, H) label array (MONAI's PIL order,
        already inverted to the input's size by the bundle's ``Invertd``).
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        self.written: list[Path] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(OUTPUT_NAME)

    def compute(self, op_input, op_output, context):
        from PIL import Image as PILImage

        pred = op_input.receive(OUTPUT_NAME)
        labels = np.asarray(pred.asnumpy() if isinstance(pred, Image) else pred)
        labels = np.squeeze(labels)
        if labels.ndim != 2:
            raise ValueError(f"expected a 2-D label map, got shape {labels.shape}")
        meta = pred.metadata() if isinstance(pred, Image) else {}
        source = Path(str(meta.get("filename_or_obj", "image")))
        mask = np.where(labels.T > 0, 255, 0).astype(np.uint8)  # (W, H) -> rows x columns
        self.output_folder.mkdir(parents=True, exist_ok=True)
        out = self.output_folder / f"{source.stem}_mask.png"
        PILImage.fromarray(mask, mode="L").save(out)
        self.written.append(out)
        logging.info(f"Wrote {out} ({mask.shape[1]}x{mask.shape[0]}, {int((mask > 0).sum())} tumour pixels)")


class LabelMapBundleInferenceOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle operator for a bundle whose ``postprocessing`` already ends in a 2-D label
    map: the segmentation bundle squeezes the channel and casts to uint8 there, because MONAI Label
    writes what ``postprocessing`` returns, while the SDK squeezes a leading channel itself. The
    channel is put back before the SDK's own conversion; nothing else changes."""

    def _send_output(self, value, name, metadata, op_output, context):
        if getattr(value, "ndim", None) == 2:
            value = value[None]
        super()._send_output(value, name, metadata, op_output, context)


class BUSSegmentationApp(Application):
    """PNG -> busmonai segmentation bundle (TorchScript) -> mask PNG."""

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        files = list_images(Path(app_context.input_path))
        model_path = check_bundle(Path(app_context.model_path))
        output = Path(app_context.output_path)

        loader = PNGImageLoaderOperator(
            self, CountCondition(self, count=len(files)), files=files, name="png_loader"
        )
        infer = LabelMapBundleInferenceOperator(
            self,
            app_context=app_context,
            bundle_path=model_path,
            bundle_config_names=BundleConfigNames(config_names=[REQUIRED_CONFIG]),
            input_mapping=[IOMapping(INPUT_NAME, Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping(OUTPUT_NAME, Image, IOType.IN_MEMORY)],
            name="bundle_inference",
        )
        writer = MaskPNGWriterOperator(self, output_folder=output, name="mask_writer")
        self.add_flow(loader, infer, {(INPUT_NAME, INPUT_NAME)})
        self.add_flow(infer, writer, {(OUTPUT_NAME, OUTPUT_NAME)})


def main(argv: list[str] | None = None) -> int:
    app = BUSSegmentationApp(argv) if argv is not None else BUSSegmentationApp()
    try:
        app.run()
    except DeployInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

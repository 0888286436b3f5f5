"""BI-RADS text prompts, all templates in one place (docs/method.md section 3).

Three styles:

- ``"cp"``: the template of "Clinical Prior-Guided Tumor Generation for Breast Ultrasound with
  Cross Domain Adaptation" (MICCAI 2025): "breast ultrasound image of {benign|malignant} tumor
  with {homogeneous|heterogeneous} echogenicity and {clear|unclear} boundary."
- ``"journal"``: the templates of "Breast Ultrasound Tumor Generation via Mask Generator and
  Text-Guided Network" (Medical Image Analysis 2025): "{benign|malignant} tumor with
  {well-defined|irregular} borders and {homogeneous|heterogeneous} internal echogenicity".
  Shape is left out on purpose: the mask carries it.
- ``"meddap"``: MEDDAP's style adjectives, "{adj} ultrasound image of {benign|malignant|no}
  tumor in the breast", to diversify intensity.

A domain (hospital or dataset name) may be prefixed for cross-domain adaptation, e.g.
"UDIAT: breast ultrasound image of ...".
"""

from __future__ import annotations

from itertools import product

from busmonai.clinical.classes import NORMAL, TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError

STYLES: tuple[str, ...] = ("cp", "journal", "meddap")
ECHOGENICITY: tuple[str, ...] = ("homogeneous", "heterogeneous")
BOUNDARY: tuple[str, ...] = ("clear", "unclear")
MEDDAP_ADJECTIVES: tuple[str, ...] = (
    "colorful", "stylized", "high-contrast", "low-contrast", "posterized",
    "solarized", "sheared", "bright", "dark",
)

CP_TEMPLATE = "breast ultrasound image of {cls} tumor with {echogenicity} echogenicity and {boundary} boundary."
CP_NORMAL = "breast ultrasound image with no tumor."
JOURNAL_TEMPLATE = "{cls} tumor with {border} borders and {echogenicity} internal echogenicity"
JOURNAL_NORMAL = "normal breast tissue with no tumor"
JOURNAL_BORDER = {"clear": "well-defined", "unclear": "irregular"}
MEDDAP_TEMPLATE = "{adjective} ultrasound image of {cls} tumor in the breast"

# What a class implies when an attribute is not known (the journal paper's class templates).
CLASS_DEFAULTS: dict[str, tuple[str, str]] = {
    "benign": ("homogeneous", "clear"),
    "malignant": ("heterogeneous", "unclear"),
}


def _check(value: str | None, allowed: tuple[str, ...], key: str) -> None:
    if value is not None and value not in allowed:
        raise BusmonaiInputError(f"unknown {key} {value!r}; use one of {', '.join(allowed)}")


def build_prompt(
    cls: str,
    echogenicity: str | None = None,
    boundary: str | None = None,
    style: str = "cp",
    adjective: str | None = None,
    domain: str | None = None,
) -> str:
    """Build the clinical text prompt of one image.

    Args:
        cls: ``benign``, ``malignant`` or ``normal``.
        echogenicity: ``homogeneous`` or ``heterogeneous``; ``None`` uses the class default.
        boundary: ``clear`` or ``unclear``; ``None`` uses the class default.
        style: ``cp``, ``journal`` or ``meddap`` (see the module docstring).
        adjective: MEDDAP style adjective (``meddap`` style only); ``None`` gives the plain
            "ultrasound image of ... tumor in the breast".
        domain: optional domain name prefixed as ``"{domain}: "``.

    Returns:
        The prompt string.

    Raises:
        BusmonaiInputError: an unknown class, attribute, style or adjective.
    """
    _check(style, STYLES, "prompt style")
    _check(cls, (*TUMOR_CLASSES, NORMAL), "class")
    _check(echogenicity, ECHOGENICITY, "echogenicity")
    _check(boundary, BOUNDARY, "boundary")
    _check(adjective, MEDDAP_ADJECTIVES, "MEDDAP adjective")
    if adjective is not None and style != "meddap":
        raise BusmonaiInputError(f"a style adjective ({adjective!r}) needs style 'meddap', not {style!r}")
    if cls != "normal":
        default_echo, default_boundary = CLASS_DEFAULTS[cls]
        echogenicity = echogenicity or default_echo
        boundary = boundary or default_boundary
    if style == "cp":
        text = CP_NORMAL if cls == "normal" else CP_TEMPLATE.format(
            cls=cls, echogenicity=echogenicity, boundary=boundary
        )
    elif style == "journal":
        text = JOURNAL_NORMAL if cls == "normal" else JOURNAL_TEMPLATE.format(
            cls=cls, border=JOURNAL_BORDER[boundary], echogenicity=echogenicity  # type: ignore[index]
        )
    else:
        text = MEDDAP_TEMPLATE.format(adjective=adjective or "", cls="no" if cls == "normal" else cls).lstrip()
    return f"{domain}: {text}" if domain else text


def all_prompts(style: str = "cp", include_normal: bool = False, domain: str | None = None) -> list[str]:
    """Every prompt of a style: each tumor class x echogenicity x boundary (x adjective for MEDDAP)."""
    _check(style, STYLES, "prompt style")
    classes = (*TUMOR_CLASSES, NORMAL) if include_normal else TUMOR_CLASSES
    prompts: list[str] = []
    if style == "meddap":
        for cls, adjective in product(classes, (None, *MEDDAP_ADJECTIVES)):
            prompts.append(build_prompt(cls, style=style, adjective=adjective, domain=domain))
        return prompts
    for cls in classes:
        if cls == "normal":
            prompts.append(build_prompt(cls, style=style, domain=domain))
            continue
        for echogenicity, boundary in product(ECHOGENICITY, BOUNDARY):
            prompts.append(build_prompt(cls, echogenicity, boundary, style=style, domain=domain))
    return prompts


def prompt_vocabulary() -> list[str]:
    """Sorted word list of every prompt of every style (for the small learned text encoder)."""
    words: set[str] = set()
    for style in STYLES:
        for prompt in all_prompts(style, include_normal=True):
            words.update(prompt.lower().replace(".", " ").replace(",", " ").replace(":", " ").split())
    return sorted(words)

from __future__ import annotations

import pytest

from busmonai.clinical.prompts import (
    MEDDAP_ADJECTIVES,
    all_prompts,
    build_prompt,
    prompt_vocabulary,
)
from busmonai.errors import BusmonaiInputError


def test_cp_template_exact() -> None:
    assert build_prompt("benign", "homogeneous", "clear") == (
        "breast ultrasound image of benign tumor with homogeneous echogenicity and clear boundary."
    )
    assert build_prompt("malignant", "heterogeneous", "unclear", domain="UDIAT") == (
        "UDIAT: breast ultrasound image of malignant tumor with heterogeneous echogenicity and unclear boundary."
    )


def test_journal_templates_match_paper_for_class_defaults() -> None:
    assert build_prompt("benign", style="journal") == (
        "benign tumor with well-defined borders and homogeneous internal echogenicity"
    )
    assert build_prompt("malignant", style="journal") == (
        "malignant tumor with irregular borders and heterogeneous internal echogenicity"
    )


def test_meddap_adjectives() -> None:
    assert build_prompt("benign", style="meddap", adjective="dark") == "dark ultrasound image of benign tumor in the breast"
    assert build_prompt("normal", style="meddap") == "ultrasound image of no tumor in the breast"
    assert len(all_prompts("meddap")) == 2 * (len(MEDDAP_ADJECTIVES) + 1)


def test_all_prompts_distinct_and_vocabulary_covers_them() -> None:
    prompts = all_prompts("cp", include_normal=True)
    assert len(prompts) == len(set(prompts)) == 9
    vocabulary = set(prompt_vocabulary())
    for prompt in prompts + all_prompts("journal") + all_prompts("meddap"):
        assert set(prompt.lower().rstrip(".").split()) <= vocabulary


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cls": "cyst"},
        {"cls": "benign", "echogenicity": "mixed"},
        {"cls": "benign", "boundary": "sharp"},
        {"cls": "benign", "style": "sd"},
        {"cls": "benign", "adjective": "dark"},
        {"cls": "benign", "style": "meddap", "adjective": "neon"},
    ],
)
def test_bad_values_raise(kwargs: dict) -> None:
    with pytest.raises(BusmonaiInputError):
        build_prompt(**kwargs)

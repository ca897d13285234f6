from __future__ import annotations

import re

import pydantic
import pytest

from inat_assets.training import TrainingOptions


def test_defaults_are_species_commercial_safe_80_10_10_by_observer_taxon() -> None:
    o = TrainingOptions()
    assert o.label_rank == "species" and not o.include_hybrids
    assert (o.splits.train, o.splits.val, o.splits.test, o.splits.group_by) == (0.8, 0.1, 0.1, "observer_taxon")
    assert o.licences.allowed_codes() == ("CC0", "CC-BY")
    assert o.exports.coco and o.exports.webdataset is None and o.exports.imagefolder is None


@pytest.mark.parametrize(
    ("licences", "codes"),
    [
        ({"preset": "research"}, {"CC0", "CC-BY", "CC-BY-NC"}),
        ({"preset": "commercial-safe", "share_alike": True}, {"CC0", "CC-BY", "CC-BY-SA"}),
        ({"preset": "research", "share_alike": True, "no_derivatives": True},
         {"CC0", "CC-BY", "CC-BY-NC", "CC-BY-SA", "CC-BY-NC-SA", "CC-BY-ND", "CC-BY-NC-ND"}),
    ],
)  # fmt: skip
def test_licence_presets_expand_to_codes(licences: dict, codes: set[str]) -> None:
    assert set(TrainingOptions.model_validate({"licences": licences}).licences.allowed_codes()) == codes


@pytest.mark.parametrize(
    ("declaration", "field"),
    [
        ({"splits": {"train": 0.9, "val": 0.1, "test": 0.1}}, "train + val + test"),
        ({"label_rank": "subspecies"}, "label_rank"),
        ({"caps": {"max_per_class": 0}}, "max_per_class"),
        ({"licences": {"preset": "anything"}}, "preset"),
        ({"exports": {"resize": {"longest_side": 256}}, "licences": {"no_derivatives": True}}, "ND licences"),
        ({"splits": {"seeed": 1}}, "seeed"),
    ],
)
def test_invalid_declarations_name_the_field(declaration: dict, field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(field)):
        TrainingOptions.model_validate(declaration)


def test_split_fingerprint_changes_with_split_settings_only() -> None:
    base = TrainingOptions()
    assert base.split_fingerprint() == TrainingOptions(caps={"max_per_class": 5}).split_fingerprint()
    assert base.split_fingerprint() != TrainingOptions(splits={"seed": 1}).split_fingerprint()

"""The ``training`` section of a dataset declaration: labels, splits, caps, licences, exports.

A pydantic model so that the declaration (a Dagster Component's YAML) is validated at load time with
the field at fault named. Every field has a default, so an empty ``training:`` section builds a
species-level, commercial-safe dataset with an 80/10/10 split grouped by observer within species.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Ranks a label can be taken at, highest first; the index carries every one of them as the lineage.
LABEL_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
# Archive taxonRank values below species that roll up to their species (first two words of the name).
INFRASPECIFIC_RANKS = ("subspecies", "variety", "form")


class LicencePreset(StrEnum):
    """Which photo licences a dataset accepts (applied per photo, not per observation)."""

    COMMERCIAL_SAFE = "commercial-safe"  # CC0, CC-BY
    RESEARCH = "research"  # CC0, CC-BY, CC-BY-NC


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitOptions(_Section):
    """Group-wise splits: every photo of one group lands in one split (see splits.py for the rule)."""

    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0
    # observer_taxon: one observer's photos of one label never straddle splits (iNaturalist's own
    # vision export rule); observation: only photos of one observation stay together.
    group_by: Literal["observer_taxon", "observation"] = "observer_taxon"
    # Per-class minimum photos in val and test: new groups are moved out of train (highest hash
    # first) until the minimum is met, as long as train keeps at least one group.
    min_val_per_class: int = Field(0, ge=0)
    min_test_per_class: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitOptions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"splits: train + val + test must be 1, not {total:g}")
        return self


class CapOptions(_Section):
    """Caps and balance; each None means no cap. Applied in this order, each drop counted."""

    max_per_observation: int | None = Field(None, ge=1)  # first photos by the archive's photo order
    max_per_observer_per_class: int | None = Field(None, ge=1)  # an observer's lowest photo ids
    max_per_class: int | None = Field(None, ge=1)  # photos kept by a stable hash of (seed, photo id)
    min_per_class: int = Field(1, ge=1)  # classes with fewer photos after the caps are dropped, listed


class LicenceOptions(_Section):
    preset: LicencePreset = LicencePreset.COMMERCIAL_SAFE
    share_alike: bool = False  # also accept the -SA variants of the preset's licences
    no_derivatives: bool = False  # also accept the -ND variants (resizing is then not allowed)

    def allowed_codes(self) -> tuple[str, ...]:
        bases = ["CC-BY"] if self.preset is LicencePreset.COMMERCIAL_SAFE else ["CC-BY", "CC-BY-NC"]
        codes = ["CC0", *bases]
        if self.share_alike:
            codes += [f"{b}-SA" for b in bases]
        if self.no_derivatives:
            codes += [f"{b}-ND" for b in bases]
        return tuple(codes)


class WebDatasetExport(_Section):
    """``.tar`` shards of at most ``shard_max_bytes`` (and ``shard_max_photos`` if set) per split."""

    shard_max_bytes: int = Field(1_000_000_000, ge=1)
    shard_max_photos: int | None = Field(None, ge=1)


class ImageFolderExport(_Section):
    """``split/label/<photo_id>.<ext>`` with ``metadata.jsonl``, as Hugging Face imagefolder loads it."""

    link: Literal["hardlink", "copy"] = "hardlink"  # hard links fall back to copies across devices


class ResizeOptions(_Section):
    """Resize exported copies only (the originals and the index stay untouched)."""

    longest_side: int = Field(..., ge=8)
    quality: int = Field(90, ge=1, le=100)


class ExportOptions(_Section):
    # Off by default: shards double the disk space; COCO JSON is small, so it is on.
    webdataset: WebDatasetExport | None = None
    imagefolder: ImageFolderExport | None = None
    coco: bool = True
    resize: ResizeOptions | None = None


class TrainingOptions(_Section):
    label_rank: Literal["kingdom", "phylum", "class", "order", "family", "genus", "species"] = "species"
    include_hybrids: bool = False  # hybrids (rank 'hybrid', or the multiplication sign in the name) keep their own label
    splits: SplitOptions = SplitOptions()
    caps: CapOptions = CapOptions()
    # iNat2021's train_mini: this many train photos per class (stable hash order) form `train_mini`.
    mini_per_class: int | None = Field(None, ge=1)
    licences: LicenceOptions = LicenceOptions()
    exports: ExportOptions = ExportOptions()

    @model_validator(mode="after")
    def _resize_needs_derivatives(self) -> TrainingOptions:
        if self.exports.resize is not None and self.licences.no_derivatives:
            raise ValueError(
                "exports.resize makes derivatives, which ND licences forbid; "
                "set licences.no_derivatives: false or drop exports.resize"
            )
        return self

    def split_fingerprint(self) -> str:
        """Digest of the settings that decide splits; previous assignments are kept only when equal."""
        relevant = {"label_rank": self.label_rank, "splits": self.splits.model_dump()}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

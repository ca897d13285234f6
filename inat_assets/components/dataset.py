"""A declared dataset: which photos, at which size, for what training (a Dagster Component).

A declaration is a ``defs.yaml`` under ``inat_assets/defs/datasets/<name>/``::

    type: inat_assets.components.InatDataset
    attributes:
      name: fungi_open
      kingdom: [Fungi]
      license: [CC0, CC-BY]
      photo_size: medium

Each declaration becomes the assets ``<name>/fetch_parquet``, ``<name>/image_batches`` (dynamic
partitions ``<name>_image_batches``) and ``<name>/training_dataset`` (built from the ``training``
section, `inat_assets.training.TrainingOptions`), all in group ``<name>``. Everything is checked when the
definitions load (enums, bounds, dates, the ``where`` expression parsed by DuckDB), so a typo
fails ``dg check defs`` and ``dagster dev`` naming the dataset and the field, never mid-run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import dagster as dg
import duckdb
from pydantic import (
    BaseModel,
    Field,
    GetPydanticSchema,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from inat_assets.dwca.fetch_list import (
    DEFAULT_QUERY_TIMEOUT_SECONDS,
    PHOTO_SIZES,
    FetchFilters,
    normalize_licenses,
    validate_where,
)
from inat_assets.errors import FetchListError, InatAssetsError
from inat_assets.training import TrainingOptions

DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class DatasetDeclarationError(InatAssetsError, ValueError):
    """A dataset declaration that cannot be used; the message names the dataset and the field."""


class Kingdom(StrEnum):
    """The kingdoms of iNaturalist's taxonomy (the archive's ``kingdom`` column)."""

    ANIMALIA = "Animalia"
    ARCHAEA = "Archaea"
    BACTERIA = "Bacteria"
    CHROMISTA = "Chromista"
    FUNGI = "Fungi"
    PLANTAE = "Plantae"
    PROTOZOA = "Protozoa"
    VIRUSES = "Viruses"


class TaxonRank(StrEnum):
    """iNaturalist's ranks (the archive's ``taxonRank`` column: the rank of the identification)."""

    KINGDOM = "kingdom"
    SUBKINGDOM = "subkingdom"
    PHYLUM = "phylum"
    SUBPHYLUM = "subphylum"
    SUPERCLASS = "superclass"
    CLASS = "class"
    SUBCLASS = "subclass"
    INFRACLASS = "infraclass"
    SUBTERCLASS = "subterclass"
    SUPERORDER = "superorder"
    ORDER = "order"
    SUBORDER = "suborder"
    INFRAORDER = "infraorder"
    PARVORDER = "parvorder"
    ZOOSECTION = "zoosection"
    ZOOSUBSECTION = "zoosubsection"
    SUPERFAMILY = "superfamily"
    EPIFAMILY = "epifamily"
    FAMILY = "family"
    SUBFAMILY = "subfamily"
    SUPERTRIBE = "supertribe"
    TRIBE = "tribe"
    SUBTRIBE = "subtribe"
    GENUS = "genus"
    GENUSHYBRID = "genushybrid"
    SUBGENUS = "subgenus"
    SECTION = "section"
    SUBSECTION = "subsection"
    COMPLEX = "complex"
    SPECIES = "species"
    HYBRID = "hybrid"
    SUBSPECIES = "subspecies"
    VARIETY = "variety"
    FORM = "form"
    INFRAHYBRID = "infrahybrid"


PhotoSize = StrEnum("PhotoSize", {size.upper(): size for size in PHOTO_SIZES})  # type: ignore[misc]
PhotoSize.__doc__ = "iNaturalist's photo sizes; the URL's /original.<ext> is rewritten to the chosen one."


class Captive(StrEnum):
    WILD = "wild"
    CULTIVATED = "cultivated"


def _training_options(context: dg.ResolutionContext, value: Any) -> TrainingOptions:
    return TrainingOptions.model_validate(value)


# The `training` section is the engine's own options model (plain pydantic, no Dagster). Dagster's
# derived YAML model refuses a plain model with constrained fields (Field(ge=...)) field by field,
# so Dagster is shown `Any` with TrainingOptions as the YAML field type, while pydantic validates
# the field with TrainingOptions' own schema (errors keep their paths: training.splits.val, ...).
if TYPE_CHECKING:
    TrainingSection = TrainingOptions
else:
    TrainingSection = Annotated[
        Any,
        GetPydanticSchema(lambda _source, handler: handler(TrainingOptions)),
        dg.Resolver(_training_options, model_field_type=TrainingOptions),
    ]


# Fields that decide which photos are selected and how they are fetched: they make the code version.
SELECTION_FIELDS = (
    "kingdom", "phylum", "class_", "order", "family", "genus", "taxon_rank", "taxon_id",
    "country_code", "license", "captive", "event_date_from", "event_date_to", "where", "photo_size",
)  # fmt: skip


_SCAFFOLD_TEMPLATE = """\
# A dataset: which photos of the archive to download, at which size. Every filter is optional;
# a photo matches a list when it has any of its values; filters combine with AND. Checked by `dg check defs` and when Dagster loads.
type: {type_name}

attributes:
  name: {name}
  description: ""
  kingdom: [Plantae]          # Animalia, Archaea, Bacteria, Chromista, Fungi, Plantae, Protozoa, Viruses
  # phylum: []  class_: []  order: []  family: []  genus: []    (names as in the archive)
  # taxon_id: []                 iNaturalist taxon ids, any rank
  # taxon_rank: [species]        rank of the identification
  # country_code: [FR]           ISO 3166-1 alpha-2
  # license: [CC0, CC-BY]        codes or licence URLs
  # captive: wild                wild or cultivated
  # event_date_from: "2020-01-01"  (quoted: YAML would read a bare date as a date)
  # event_date_to: "2024-12-31"
  # where: "o.coordinateUncertaintyInMeters < 100"
  photo_size: medium          # original, large, medium, small, thumb, square
"""


class InatDatasetScaffolder(dg.Scaffolder):
    """`dg scaffold defs inat_assets.components.InatDataset datasets/<name>`: a declaration to edit."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = request.target_path.name
        if not re.fullmatch(DATASET_NAME_PATTERN, name):
            raise DatasetDeclarationError(
                f"dataset folder {name!r}: the folder name is the dataset's name and must match "
                f"{DATASET_NAME_PATTERN} (lower case, digits, underscores)"
            )
        if request.scaffold_format != "yaml":
            dg.scaffold_component(request)
            return
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            _SCAFFOLD_TEMPLATE.format(type_name=request.type_name, name=name)
        )


@dg.scaffold_with(InatDatasetScaffolder)
class InatDataset(dg.Component, dg.Model, dg.Resolvable):
    """One declared dataset: a filtered photo list of the archive and its downloaded image batches.

    Empty lists mean no filter; all filters combine with AND.
    """

    name: str = Field(pattern=DATASET_NAME_PATTERN, max_length=40, description="Asset key prefix and group.")
    description: str = Field(default="", description="What this dataset is for (shown in the UI).")
    kingdom: list[Kingdom] = Field(default=[], description="Kingdoms to keep.")
    phylum: list[str] = Field(default=[], description="Phyla to keep.")
    class_: list[str] = Field(default=[], description="Classes to keep (the archive's `class` column).")
    order: list[str] = Field(default=[], description="Orders to keep.")
    family: list[str] = Field(default=[], description="Families to keep.")
    genus: list[str] = Field(default=[], description="Genera to keep.")
    taxon_rank: list[TaxonRank] = Field(default=[], description="Ranks of the identification to keep.")
    taxon_id: list[int] = Field(default=[], description="iNaturalist taxon ids to keep (any rank).")
    country_code: list[str] = Field(default=[], description="ISO 3166-1 alpha-2 codes (NA is Namibia).")
    license: list[str] = Field(
        default=[], description="Photo licences: codes (CC0, CC-BY, CC-BY-NC, ...) or licence URLs."
    )
    captive: Captive | None = Field(default=None, description="wild or cultivated; unset keeps both.")
    event_date_from: str | None = Field(default=None, description="Earliest observation date, YYYY-MM-DD.")
    event_date_to: str | None = Field(default=None, description="Latest observation date, YYYY-MM-DD.")
    where: str | None = Field(
        default=None,
        description="One SQL boolean expression over `o.` (observations) and `m.` (media) columns.",
    )
    photo_size: PhotoSize = Field(default=PhotoSize.ORIGINAL, description="Size of the photos to fetch.")  # type: ignore[valid-type]
    query_timeout_seconds: float = Field(
        default=DEFAULT_QUERY_TIMEOUT_SECONDS,
        gt=0,
        description="Not a filter: a fetch-list statement running longer is stopped and the run fails naming the where.",
    )
    training: TrainingSection = Field(
        default_factory=TrainingOptions,
        description=(
            "The training dataset built from the downloaded batches: label rank, splits, caps, licences, "
            "exports (inat_assets.training.TrainingOptions; every field has a default)."
        ),
    )

    @field_validator("country_code")
    @classmethod
    def _two_letter_codes(cls, value: list[str]) -> list[str]:
        bad = [code for code in value if len(code) != 2 or not code.isalpha()]
        if bad:
            raise ValueError(f"{bad} are not ISO 3166-1 alpha-2 country codes (two letters, e.g. FR)")
        return [code.upper() for code in value]

    @field_validator("event_date_from", "event_date_to")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:  # fromisoformat alone would also take 20200101 and 2020-W01-1
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
        raise ValueError(f"{value!r} is not a date; write YYYY-MM-DD")

    @field_validator("where")
    @classmethod
    def _parsed_where(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            validate_where(value)
        except FetchListError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("license")
    @classmethod
    def _known_licences(cls, value: list[str]) -> list[str]:
        if value:
            with duckdb.connect() as con:
                try:
                    normalize_licenses(con, value)
                except FetchListError as exc:
                    raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _dates_in_order(self) -> InatDataset:
        if self.event_date_from and self.event_date_to and self.event_date_from > self.event_date_to:
            raise ValueError(f"event_date_from {self.event_date_from} is after event_date_to {self.event_date_to}")
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_dataset(cls, data: Any, handler: Any) -> Any:
        return _named_validation(data, handler)

    @classmethod
    def model(cls) -> type[BaseModel]:
        """Dagster's YAML model of the declaration, with errors prefixed by the dataset's name too.

        Dagster checks enums, numbers and bounds on this model first (that is what `dg check yaml`
        and the UI see), before the component's own validators run.
        """
        if cls not in _NAMED_MODELS:
            derived = super().model()
            _NAMED_MODELS[cls] = create_model(
                derived.__name__,
                __base__=derived,
                __validators__={"name_the_dataset": model_validator(mode="wrap")(_named_validation)},  # type: ignore[dict-item]
            )
        return _NAMED_MODELS[cls]

    @classmethod
    def resolve_from_model(cls, context: dg.ResolutionContext, model: BaseModel) -> InatDataset:
        try:
            return super().resolve_from_model(context, model)
        except DatasetDeclarationError:
            raise
        except Exception as exc:  # a nested section (training) failed while resolving
            raise DatasetDeclarationError(f"dataset {getattr(model, 'name', None)!r}: {exc}") from exc

    def filters(self) -> FetchFilters:
        return FetchFilters(
            kingdom=[k.value for k in self.kingdom],
            phylum=self.phylum,
            class_=self.class_,
            order=self.order,
            family=self.family,
            genus=self.genus,
            taxon_rank=[r.value for r in self.taxon_rank],
            taxon_id=self.taxon_id,
            country_code=self.country_code,
            license=self.license,
            captive=self.captive.value if self.captive else None,
            event_date_from=self.event_date_from,
            event_date_to=self.event_date_to,
            where=self.where,
            photo_size=self.photo_size.value,
            timeout_seconds=self.query_timeout_seconds,
        )

    def selection_version(self) -> str:
        """A hash of what selects and fetches the photos: the assets' code version (stale when it changes).

        The description and the training options are left out: they change no photo.
        """
        return _digest(self.model_dump(mode="json", include=set(SELECTION_FIELDS)))

    def selection(self) -> dict[str, object]:
        """The dataset's name and the selection fields that are set (the training dataset's card shows them)."""
        chosen = self.model_dump(mode="json", include=set(SELECTION_FIELDS))
        return {"dataset": self.name, **{k: v for k, v in chosen.items() if v not in ([], None)}}

    def training_version(self) -> str:
        """A hash of the selection and the ``training`` section: the training asset's code version.

        Editing the training options makes only ``<name>/training_dataset`` stale; a changed
        selection changes this too (the photos under the training dataset changed).
        """
        return _digest({"selection": self.selection_version(), "training": self.training.model_dump(mode="json")})

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return dataset_definitions(self)


def dataset_definitions(dataset: InatDataset, retry_policy: dg.RetryPolicy | None = None) -> dg.Definitions:
    """The dataset's assets, check and job (also used by tests to build a dataset without YAML)."""
    # Imported here: the asset modules import this one for the declaration's types.
    from inat_assets.assets.fetch_list import build_fetch_list_check, build_fetch_parquet
    from inat_assets.assets.images import BATCH_RETRY_POLICY, build_image_batches
    from inat_assets.assets.training import build_training_dataset_asset
    from inat_assets.automation import batch_fill_sensor, batch_run_tags, follow_upstream

    # The fetch list follows a rebuilt table or a changed declaration (its code version) under the
    # archive_automation sensor; the batches are filled by this dataset's own batch-fill sensor.
    fetch = follow_upstream(build_fetch_parquet(dataset))
    images = build_image_batches(dataset, fetch, retry_policy or BATCH_RETRY_POLICY)
    # Built by hand (no automation condition): it reads every manifest, so not after each batch.
    training = build_training_dataset_asset(dataset, fetch, images)
    return dg.Definitions(
        assets=[fetch, images, training],
        sensors=[batch_fill_sensor(images, dataset.name)],
        asset_checks=[build_fetch_list_check(dataset, fetch)],
        jobs=[
            dg.define_asset_job(
                f"{dataset.name}_image_batches_job",
                selection=dg.AssetSelection.assets(images),
                description=f"Download image batches of the {dataset.name} dataset (one per run; backfill for many).",
                tags=batch_run_tags(),
            )
        ],
    )


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


_NAMED_MODELS: dict[type, type[BaseModel]] = {}
_FIELD_PART = re.compile(r"^[a-z_][a-z0-9_]*$")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``('kingdom', 'list[str-enum[Kingdom]]', 0)`` -> ``kingdom.0``: fields and indices, no union tags."""
    parts = [str(p) for p in loc if isinstance(p, int) or _FIELD_PART.match(p)]
    return ".".join(parts) or "declaration"


def _named_validation(data: Any, handler: Any) -> Any:
    """Run pydantic's validation; on failure, one error that names the dataset and each field at fault."""
    try:
        return handler(data)
    except ValidationError as exc:
        name = data.get("name") if isinstance(data, dict) else getattr(data, "name", None)
        problems = "; ".join(
            f"{_field_path(error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
            # Dagster's model also accepts a template string for every field; that branch only adds noise.
            if not (error["type"] == "string_type" and error["loc"] and error["loc"][-1] == "str")
        )
        raise DatasetDeclarationError(f"dataset {name!r}: {problems}") from None

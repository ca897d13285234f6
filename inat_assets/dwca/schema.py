"""Column types for the archive's CSV members.

Columns are always taken from each file's header; this module only says which of the known names
get a type other than text. Unknown columns (new exporter flags, future exports) stay VARCHAR, so a
new column never breaks a conversion and never silently loses its value.
"""

from __future__ import annotations

from typing import Literal

Table = Literal["observations", "media"]

# The two published observations.csv layouts (see ../shared/reference/inat-dwca.md).
OBSERVATION_COLUMNS_45: tuple[str, ...] = (
    "id", "occurrenceID", "basisOfRecord", "modified", "institutionCode", "collectionCode",
    "datasetName", "informationWithheld", "catalogNumber", "references", "occurrenceRemarks",
    "recordedBy", "recordedByID", "identifiedBy", "identifiedByID", "captive", "eventDate",
    "eventTime", "verbatimEventDate", "verbatimLocality", "decimalLatitude", "decimalLongitude",
    "coordinateUncertaintyInMeters", "geodeticDatum", "countryCode", "stateProvince",
    "identificationID", "dateIdentified", "identificationRemarks", "taxonID", "scientificName",
    "taxonRank", "kingdom", "phylum", "class", "order", "family", "genus", "license",
    "rightsHolder", "inaturalistLogin", "publishingCountry", "sex", "lifeStage",
    "reproductiveCondition",
)  # fmt: skip
OBSERVATION_COLUMNS_48: tuple[str, ...] = (
    *OBSERVATION_COLUMNS_45[: OBSERVATION_COLUMNS_45.index("publishingCountry") + 1],
    "projectId",
    *OBSERVATION_COLUMNS_45[OBSERVATION_COLUMNS_45.index("publishingCountry") + 1 :],
    "vitality",
    "dynamicProperties",
)
MEDIA_COLUMNS: tuple[str, ...] = (
    "id", "type", "format", "identifier", "references", "created", "creator", "publisher",
    "license", "rightsHolder", "catalogNumber",
)  # fmt: skip

# Everything not listed here is VARCHAR. Dates stay text on purpose: eventDate mixes local
# timestamps with offsets and bare dates, and casting would turn a bare date into midnight.
_TYPES: dict[Table, dict[str, str]] = {
    "observations": {
        "id": "BIGINT",
        "catalogNumber": "BIGINT",
        "identificationID": "BIGINT",
        "taxonID": "BIGINT",
        "decimalLatitude": "DOUBLE",
        "decimalLongitude": "DOUBLE",
        # Published as whole metres, but nothing promises that; a double keeps every value exact.
        "coordinateUncertaintyInMeters": "DOUBLE",
        "publicLatitude": "DOUBLE",
        "publicLongitude": "DOUBLE",
    },
    "media": {
        "id": "BIGINT",
        "catalogNumber": "BIGINT",
    },
}

# Columns a table cannot be used without; their absence from a header is an error, not a warning.
REQUIRED_COLUMNS: dict[Table, tuple[str, ...]] = {
    "observations": ("id", "taxonID", "scientificName", "kingdom"),
    "media": ("id", "type", "format", "identifier", "license", "catalogNumber"),
}


def column_types(table: Table, header: tuple[str, ...]) -> dict[str, str]:
    """Ordered name -> DuckDB type mapping for a header."""
    known = _TYPES[table]
    return {name: known.get(name, "VARCHAR") for name in header}


def describe_layout(header: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Name an observations.csv layout and list the columns beyond the published ones."""
    if header[: len(OBSERVATION_COLUMNS_48)] == OBSERVATION_COLUMNS_48:
        base, name = OBSERVATION_COLUMNS_48, "48-column export (2025-01-13 and later)"
    elif header[: len(OBSERVATION_COLUMNS_45)] == OBSERVATION_COLUMNS_45:
        base, name = OBSERVATION_COLUMNS_45, "45-column export (2022-02 to 2025-01-09)"
    else:
        known = set(OBSERVATION_COLUMNS_48)
        return f"unrecognised {len(header)}-column layout", tuple(c for c in header if c not in known)
    return name, header[len(base) :]

"""Realistic sample iNaturalist Darwin Core Archives, for the demo, the tests and the benchmark.

The archives look like iNaturalist's research-grade export (see the reference notes on the real
archive): a header-driven ``observations.csv`` in the 45-column (2022-02 .. 2025-01-09) or
48-column (from 2025-01-13) layout, a ``media.csv`` Multimedia extension, ``meta.xml`` and an EML
file, all written the way Ruby's CSV writer does it (quote only when needed, ``""`` for an empty
string, nothing for a missing value, ``\\n`` line ends). The quirks a converter must survive are
always present: quoted commas, doubled quotes and quoted newlines in names, HTML remarks, bare
dates beside timestamps, Namibia's ``NA``, ``5.0e-05`` coordinates, http (and, in the 48
layout, https) licence URLs, Sound ids that collide with photo ids, orphan media rows, and (unless
switched off) a few malformed lines that a correct converter must reject.

Every count in :class:`SampleArchiveInfo` is taken from what was actually written, so tests can
assert a converter's exact output against it.

Speed: rows are stamped out of a pool of at most 4,096 pre-rendered row templates (only the ids
change per row), the per-row numbers are drawn with numpy, and each member is streamed into the
zip in chunks; deflate takes most of the time. Small archives (<= 4,096 observations) use every
template exactly once, so every row is distinct.

The bundled sample (``BUNDLED_SAMPLE``, made from ``BUNDLED_SAMPLE_SPEC``) is regenerated with::

    .venv/bin/python -m inat_assets.testing.sample inat_assets/sample_data/sample-dwca.zip \\
        --observations 300 --layout 48 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Literal
from xml.sax.saxutils import quoteattr

import numpy as np

from inat_assets.dwca.fetch_list import LICENSE_CODES
from inat_assets.dwca.schema import MEDIA_COLUMNS, OBSERVATION_COLUMNS_45, OBSERVATION_COLUMNS_48
from inat_assets.storage import atomic_path

# --------------------------------------------------------------------------------------------
# Columns and Darwin Core terms
# --------------------------------------------------------------------------------------------

# The published layouts live in the converter's schema module; the generator writes exactly those.
# fmt: off
_DWC = "http://rs.tdwg.org/dwc/terms/"
_DC = "http://purl.org/dc/terms/"
_GBIF = "http://rs.gbif.org/terms/1.0/"
_INAT = "https://www.inaturalist.org/schema/terms/"
# Namespaces as iNaturalist's exporter uses them; every other column is a dwc: term.
_TERM_NAMESPACE = {
    "modified": _DC, "references": _DC, "license": _DC, "rightsHolder": _DC,
    "type": _DC, "format": _DC, "identifier": _DC, "created": _DC, "creator": _DC, "publisher": _DC,
    "publishingCountry": _GBIF, "projectId": _GBIF,
    "captive": _INAT, "publicLatitude": _INAT, "publicLongitude": _INAT,
}
# fmt: on
_TERM_OVERRIDES = {
    "inaturalistLogin": "http://xmlns.com/foaf/0.1/nick",
    # iNaturalist spells the column the British way; the Darwin Core term is otherCatalogNumbers.
    "otherCatalogueNumbers": _DWC + "otherCatalogNumbers",
}
# meta.xml defaults iNaturalist declares for constant columns.
_TERM_DEFAULTS = {
    "basisOfRecord": "HumanObservation",
    "institutionCode": "iNaturalist",
    "collectionCode": "Observations",
}


def term_uri(column: str) -> str:
    """The Darwin Core (or iNaturalist/GBIF) term URI iNaturalist's meta.xml gives a column."""
    return _TERM_OVERRIDES.get(column) or _TERM_NAMESPACE.get(column, _DWC) + column


def observation_columns(layout: str, extra_columns: Sequence[str] = ()) -> tuple[str, ...]:
    base = {"45": OBSERVATION_COLUMNS_45, "48": OBSERVATION_COLUMNS_48}[layout]
    clash = set(base) & set(extra_columns)
    if clash or len(set(extra_columns)) != len(extra_columns):
        raise ValueError(f"extra_columns repeat a column: {sorted(clash) or list(extra_columns)}")
    return (*base, *extra_columns)


# --------------------------------------------------------------------------------------------
# Licences and media URLs
# --------------------------------------------------------------------------------------------

# Photos under these three are mirrored to the AWS Open Data bucket; the rest stay on static.
OPEN_LICENSES = frozenset({"CC0", "CC-BY", "CC-BY-NC"})
_MEDIA_LICENSE_WEIGHTS = (10, 20, 45, 6, 3, 10, 6)
_OBSERVATION_LICENSE_WEIGHTS = {"CC0": 15, "CC-BY": 25, "CC-BY-NC": 60}
OPEN_DATA_PHOTOS = "https://inaturalist-open-data.s3.amazonaws.com/photos"
STATIC_PHOTOS = "https://static.inaturalist.org/photos"
STATIC_SOUNDS = "https://static.inaturalist.org/sounds"
# (extension, content type, weight): iNaturalist keeps the uploaded extension.
# fmt: off
_PHOTO_EXTENSIONS = (("jpg", "image/jpeg", 50), ("jpeg", "image/jpeg", 35), ("JPG", "image/jpeg", 8), ("png", "image/png", 7))
# fmt: on


def license_url(code: str, *, https: bool) -> str:
    scheme = "https" if https else "http"
    if code == "CC0":
        return f"{scheme}://creativecommons.org/publicdomain/zero/1.0/"
    return f"{scheme}://creativecommons.org/licenses/{code[3:].lower()}/4.0/"


# --------------------------------------------------------------------------------------------
# Pools of people, places and taxa
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    name: str  # "" = no display name: the exporter then writes the login
    login: str
    orcid: str | None = None

    @property
    def display(self) -> str:
        return self.name or self.login


# The first five are the quirky names every sample must contain (see _QUIRK_RECIPES).
_USERS = (
    _User("Anna\nKowalska", "akowalska"),  # a quoted newline: name fields are not cleaned
    _User('Robert "Bob" O\'Neil', "bob_oneil"),  # doubled quotes
    _User("Smith, John", "jsmith", "0000-0002-1825-0097"),  # a quoted comma
    _User("田中 花子", "hanako_t"),
    _User("María José Núñez-Ibáñez", "mjnunez", "0000-0001-5109-3700"),
    _User("Ken-ichi Ueda", "kueda", "0000-0003-0145-6846"),
    _User("", "gdurkee"),
    _User("Udi Oron אודי אורון", "udi"),
    _User("Jürgen Müller", "jmueller"),
    _User("Nguyễn Văn An", "nguyenvanan"),
    _User("Zoë Ångström", "zoe_a", "0000-0003-1419-2405"),
    _User("Sipho Ndlovu", "sndlovu"),
    _User("Оксана Шевченко", "oksana_sh"),
    _User("Lars Øvergaard", "larso"),
    _User("Priya Raman", "priyaraman", "0000-0002-9079-593X"),
    _User("", "birdnerd_77"),
    _User("Chris Brown", "cbrown"),
    _User("Ngozi Okafor", "ngozio"),
)


@dataclass(frozen=True)
class _Place:
    country: str
    state: str
    localities: tuple[str, ...]
    lat: float
    lon: float
    tz_minutes: int  # local offset used for eventDate
    county: str | None = None
    spread: float = 0.4  # degrees of scatter around (lat, lon); 0 = exactly this point


# fmt: off
_PLACES = (
    _Place("US", "California", ("Tilden Regional Park, Contra Costa County, US-CA, US", "Berkeley, CA, USA", "California, US"), 37.89, -122.24, -420, "Contra Costa County"),
    _Place("US", "Texas", ("Austin, TX, USA", "Big Bend National Park, Brewster County, US-TX, US"), 30.27, -97.74, -300, "Travis County"),
    _Place("MX", "Oaxaca", ("Oaxaca de Juárez, Oax., México",), 17.07, -96.72, -360),
    _Place("BR", "São Paulo", ("Parque Ibirapuera, São Paulo - SP, Brasil",), -23.59, -46.66, -180),
    _Place("GB", "England", ("Hampstead Heath, London, UK", "Norfolk, England, GB"), 51.56, -0.16, 60),
    _Place("DE", "Bayern", ("Englischer Garten, München, Deutschland",), 48.16, 11.60, 120),
    _Place("FR", "Occitanie", ("Montpellier, France",), 43.61, 3.88, 120),
    _Place("ZA", "Western Cape", ("Table Mountain National Park, Cape Town, South Africa",), -33.96, 18.40, 120),
    _Place("JP", "東京都", ("東京都新宿区", "Shinjuku Gyoen, Tokyo, Japan"), 35.68, 139.71, 540),
    _Place("AU", "New South Wales", ("Royal National Park, NSW, Australia",), -34.07, 151.06, 600),
    _Place("IN", "Karnataka", ("Bengaluru, Karnataka, India",), 12.97, 77.59, 330),
    _Place("IL", "HaZafon", ("Hula Valley, Israel",), 33.07, 35.61, 180),
)
# Namibia's code is NA: readers that treat "NA" as missing lose these rows' country.
_NAMIBIA = (
    _Place("NA", "Erongo", ("Swakopmund, Namibia", "Namib-Naukluft Park, Erongo, NA"), -22.68, 14.53, 120),
    _Place("NA", "Khomas", ("Windhoek, Khomas, Namibia",), -22.57, 17.08, 120),
)
# Ruby writes floats below 1e-4 in scientific notation: points on the equator and Greenwich meridian.
_EQUATOR = _Place("EC", "Pichincha", ("Mitad del Mundo, Quito, Ecuador",), 5.0e-05, -78.4557, -300, spread=0)
_MERIDIAN = _Place("GB", "England", ("Greenwich Park, London, UK",), 51.4779, -7.3e-05, 60, spread=0)
# fmt: on


@dataclass(frozen=True)
class _Taxon:
    taxon_id: int
    name: str
    rank: str
    lineage: tuple[str, str, str, str, str, str | None]  # kingdom, phylum, class, order, family, genus
    countries: tuple[str, ...] = ()  # only observed there (empty = anywhere)

    @property
    def kingdom(self) -> str:
        return self.lineage[0]


def _taxa(kingdom: str, phylum: str, rows: str) -> tuple[_Taxon, ...]:
    """Compact table: 'taxon_id;name;rank;class;order;family;genus[;countries]' per line."""
    out = []
    for line in rows.strip().splitlines():
        tid, name, rank, klass, order, family, genus, *where = (p.strip() for p in line.split(";"))
        lineage = (kingdom, phylum, klass, order, family, genus or None)
        out.append(_Taxon(int(tid), name, rank, lineage, tuple(where[0].split()) if where else ()))
    return tuple(out)


# fmt: off
_TAXA: tuple[_Taxon, ...] = (
    *_taxa("Plantae", "Tracheophyta", """
        49005;Quercus agrifolia;species;Magnoliopsida;Fagales;Fagaceae;Quercus;US
        48225;Eschscholzia californica;species;Magnoliopsida;Ranunculales;Papaveraceae;Eschscholzia;US
        47602;Taraxacum officinale;species;Magnoliopsida;Asterales;Asteraceae;Taraxacum
        52821;Achillea millefolium;species;Magnoliopsida;Asterales;Asteraceae;Achillea
        47604;Asteraceae;family;Magnoliopsida;Asterales;Asteraceae;
        53406;Bellis perennis;species;Magnoliopsida;Asterales;Asteraceae;Bellis
        51702;Arctostaphylos;genus;Magnoliopsida;Ericales;Ericaceae;Arctostaphylos;US
        78938;Lupinus albifrons collinus;variety;Magnoliopsida;Fabales;Fabaceae;Lupinus;US
        82689;Ginkgo biloba;species;Ginkgoopsida;Ginkgoales;Ginkgoaceae;Ginkgo
        48461;Pinus sylvestris;species;Pinopsida;Pinales;Pinaceae;Pinus
        55863;Polypodium vulgare;species;Polypodiopsida;Polypodiales;Polypodiaceae;Polypodium
        136095;Welwitschia mirabilis;species;Gnetopsida;Welwitschiales;Welwitschiaceae;Welwitschia;NA
        53549;Hedera helix;species;Magnoliopsida;Apiales;Araliaceae;Hedera
        """),
    *_taxa("Plantae", "Bryophyta", "56087;Polytrichum commune;species;Polytrichopsida;Polytrichales;Polytrichaceae;Polytrichum"),
    *_taxa("Animalia", "Chordata", """
        27818;Taricha torosa;species;Amphibia;Caudata;Salamandridae;Taricha;US
        12727;Turdus migratorius;species;Aves;Passeriformes;Turdidae;Turdus;US MX
        5212;Buteo jamaicensis calurus;subspecies;Aves;Accipitriformes;Accipitridae;Buteo;US MX
        13858;Passer domesticus;species;Aves;Passeriformes;Passeridae;Passer
        8010;Corvus corax;species;Aves;Passeriformes;Corvidae;Corvus
        46017;Sciurus carolinensis;species;Mammalia;Rodentia;Sciuridae;Sciurus;US GB
        42400;Oryx gazella;species;Mammalia;Artiodactyla;Bovidae;Oryx;NA ZA
        1453389;Giraffa giraffa angolensis;subspecies;Mammalia;Artiodactyla;Giraffidae;Giraffa;NA
        36514;Anolis carolinensis;species;Reptilia;Squamata;Dactyloidae;Anolis;US
        """),
    *_taxa("Animalia", "Arthropoda", """
        48662;Danaus plexippus;species;Insecta;Lepidoptera;Nymphalidae;Danaus
        47219;Apis mellifera;species;Insecta;Hymenoptera;Apidae;Apis
        47993;Ophion;genus;Insecta;Hymenoptera;Ichneumonidae;Ophion
        48484;Coccinella septempunctata;species;Insecta;Coleoptera;Coccinellidae;Coccinella
        52486;Libellulidae;family;Insecta;Odonata;Libellulidae;
        54327;Araneus diadematus;species;Arachnida;Araneae;Araneidae;Araneus
        """),
    *_taxa("Animalia", "Mollusca", "480298;Cornu aspersum;species;Gastropoda;Stylommatophora;Helicidae;Cornu"),
    *_taxa("Animalia", "Echinodermata", "47673;Pisaster ochraceus;species;Asteroidea;Forcipulatida;Asteriidae;Pisaster;US"),
    *_taxa("Fungi", "Basidiomycota", """
        48715;Amanita muscaria;species;Agaricomycetes;Agaricales;Amanitaceae;Amanita
        54134;Trametes versicolor;species;Agaricomycetes;Polyporales;Polyporaceae;Trametes
        """),
    *_taxa("Fungi", "Ascomycota", """
        56830;Morchella;genus;Pezizomycetes;Pezizales;Morchellaceae;Morchella
        54519;Xanthoria parietina;species;Lecanoromycetes;Teloschistales;Teloschistaceae;Xanthoria
        """),
    *_taxa("Chromista", "Ochrophyta", "50863;Macrocystis pyrifera;species;Phaeophyceae;Laminariales;Laminariaceae;Macrocystis;US"),
    *_taxa("Protozoa", "Mycetozoa", "55556;Fuligo septica;species;Myxomycetes;Physarales;Physaraceae;Fuligo"),
)
# fmt: on
_TAXON = {t.name: t for t in _TAXA}
# Share of templates per kingdom; Plantae is about 40 % of the real archive.
_KINGDOM_SHARE = {"Plantae": 0.40, "Animalia": 0.48, "Fungi": 0.08, "Chromista": 0.02, "Protozoa": 0.02}
KINGDOMS = tuple(_KINGDOM_SHARE)

# Remarks: whitespace is collapsed by the exporter, but HTML is kept.
# fmt: off
_SHORT_REMARKS = (
    "Found under a log near the trail.",
    "Several individuals, calling at dusk.",
    "Sehr häufig am Waldrand, etwa 20 Exemplare.",
    "在公园的池塘边看到的。",
    "Vu près de l'étang, ~20 individus.",
    "1 in talus field above the lake. Not uncommon to hear or see 4 individuals while hiking.",
    "Growing on a dead oak, 10-15 cm across",
)
_HTML_REMARKS = (
    "I think this is <i>Araneus</i>, but the abdomen pattern is unusual. <strong>Update:</strong> confirmed by the key in Levi (2002).",
    'Compare with <a href="https://www.inaturalist.org/taxa/47602">Taraxacum officinale</a>; the bracts are not reflexed.',
    "<p>Flowers white, 5 petals, leaves opposite.</p><p>Photo 2 shows the underside, photo 3 the habit.</p>",
)
_LINE_SEPARATOR_REMARK = "Two notes:\u2028first line\u2029second paragraph (Unicode separators pass through unquoted)"
_LONG_HTML_UNIT = (
    "<p>Observed during the <b>City Nature Challenge</b>, on the north slope, in mixed woodland with "
    '<i>Quercus</i> and <i>Umbellularia</i>. See <a href="https://www.inaturalist.org/projects/city-nature-challenge-2024">'
    "the project</a> for the other records, and the notes on habitat, weather (overcast, 14 C) and behaviour.</p> "
)
_ID_REMARKS = ("I think it's currently known by this name.", "As per map at http://bugguide.net/node/view/50852#range", "Note the <i>reflexed</i> bracts.")
_REPRODUCTIVE = ("flowering", "fruiting", "flower budding", "flowering|fruiting", "flowering|flower budding", "no evidence of flowering")
_LIFE_STAGES = ("adult", "juvenile", "larva", "nymph", "egg", "pupa")
_ANNOTATIONS = (
    {"evidenceOfPresence": "Organism"},
    {"evidenceOfPresence": "Track"},
    {"flowersAndFruits": "Flowers", "leaves": "Green Leaves"},
    {"evidenceOfPresence": "Organism", "alive": "yes"},
)
# fmt: on


# --------------------------------------------------------------------------------------------
# Ruby CSV writer dialect
# --------------------------------------------------------------------------------------------


def csv_field(value: str | None) -> str:
    """One field as Ruby's CSV writer emits it: nothing for None, ``""`` for "", quoted when needed."""
    if value is None:
        return ""
    if value == "":
        return '""'
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_line(values: Iterable[str | None]) -> str:
    return ",".join(map(csv_field, values)) + "\n"


def ruby_float(value: float) -> str:
    """Ruby's Float#to_s: shortest repr, always a '.', scientific below 1e-4 (``5.0e-05``)."""
    text = repr(float(value))
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


# --------------------------------------------------------------------------------------------
# Specs and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSpec:
    observations: int = 300
    layout: Literal["45", "48"] = "48"
    seed: int = 0
    extra_columns: tuple[str, ...] = ()  # appended exporter columns, e.g. ("county", "publicLatitude")
    malformed_lines: bool = True  # 3 bad lines in observations.csv, 2 in media.csv
    orphan_media: int = 3  # StillImage rows whose observation id is absent from observations.csv
    long_remark_bytes: int = 0  # > 0: one occurrenceRemarks of exactly this many bytes
    mean_photos: float = 1.7  # photos per observation with photos (1 + Poisson), capped at 20
    sound_share: float = 0.03  # observations with a sound; half of them have no photo
    # Deflate level of the members. 6 is zip's default and gives the real archive's ratio (~12.6 %);
    # 1 builds a 2M-observation archive about twice as fast (deflate dominates the build time).
    compresslevel: int = 6

    def __post_init__(self) -> None:
        if self.layout not in ("45", "48"):
            raise ValueError(f"layout must be '45' or '48', not {self.layout!r}")
        if self.observations < 10:
            raise ValueError("observations must be >= 10 (room for the special rows)")
        if self.orphan_media < 0 or self.long_remark_bytes < 0 or self.mean_photos < 1:
            raise ValueError("orphan_media, long_remark_bytes must be >= 0 and mean_photos >= 1")
        if self.orphan_media + 5 > self.observations:
            raise ValueError("orphan_media must leave room among the observations")
        observation_columns(self.layout, self.extra_columns)  # validates the names


@dataclass(frozen=True)
class SampleArchiveInfo:
    path: Path
    layout: str  # "45", "48" (extra columns allowed after them) or "unknown"
    observation_columns: tuple[str, ...]
    observations_valid: int  # rows a correct converter must keep
    observations_malformed: int  # lines a correct converter must reject
    media_valid: int
    media_malformed: int
    still_images: int  # valid StillImage media rows (incl. orphans)
    sounds: int
    orphan_media: int  # valid StillImage rows whose observation is absent
    # Valid, non-orphan StillImage rows per kingdom (resp. licence code) of their observation.
    photos_by_kingdom: Mapping[str, int]
    photos_by_license: Mapping[str, int]
    photos_by_host: Mapping[str, int]  # valid StillImage rows (incl. orphans) per URL host
    sound_ids_colliding_with_photos: int  # Sound catalogNumbers that are also a StillImage's
    # Up to 3 observation ids per quirk (see quirk_tags), in file order, to assert exact values.
    quirk_observation_ids: Mapping[str, tuple[int, ...]]
    long_remark_observation_id: int | None
    orphan_observation_ids: tuple[int, ...]  # the absent observation ids orphan media point at
    # The rejected lines without their "\n" (generated archives; empty for wrapped real rows).
    malformed_observation_lines: tuple[str, ...]
    malformed_media_lines: tuple[str, ...]
    min_observation_id: int | None
    max_observation_id: int | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, ensure_ascii=False, indent=2)


# The demo's and tests' sample; the module docstring has the command that regenerates it.
BUNDLED_SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "sample-dwca.zip"
BUNDLED_SAMPLE_SPEC = SampleSpec(observations=300, layout="48", seed=0)


def quirk_tags(row: Mapping[str, str | None]) -> set[str]:
    """Names of the quirks an observation row shows (works on generated and parsed rows)."""

    def get(column: str) -> str:
        return row.get(column) or ""

    names = get("recordedBy") + get("rightsHolder")
    checks = {
        "quoted_newline": "\n" in names,
        "doubled_quotes": '"' in names,
        "quoted_comma": "," in get("recordedBy"),
        "non_ascii_name": not get("recordedBy").isascii(),
        "namibia": get("countryCode") == "NA",
        "scientific_notation": "e-" in get("decimalLatitude") + get("decimalLongitude"),
        "date_only": len(get("eventDate")) == 10,
        "timestamp_with_offset": len(get("eventDate")) == 25,
        "cultivated": get("captive") == "cultivated",
        "reproductive_list": "|" in get("reproductiveCondition"),
        "html_remarks": "<" in get("occurrenceRemarks"),
        "line_separator": "\u2028" in get("occurrenceRemarks"),
        "https_license": get("license").startswith("https://"),
        "http_license": get("license").startswith("http://"),
        "project_list": "|" in get("projectId"),
        "dynamic_properties": get("dynamicProperties").startswith("{"),
    }
    return {name for name, present in checks.items() if present}


# --------------------------------------------------------------------------------------------
# Row templates
# --------------------------------------------------------------------------------------------

_ID = "\x00"  # stands for the observation id inside a template
_MEDIA_ID = "\x01"  # stands for the photo / sound id
_PHOTO_VARIANTS = 8  # photo templates per observation template (photo n uses variant n % 8)
# The day the simulated export was made, per layout; also the zip members' timestamp.
_EXPORT_DAY = {"45": date(2024, 12, 28), "48": date(2025, 8, 2)}


@dataclass
class _Template:
    record: dict[str, str | None]  # column -> value, with _ID where the observation id goes
    kingdom: int  # index into KINGDOMS
    obs_frags: list[str]  # observation line split at the id: str(id).join(obs_frags)
    photo_frags: list[list[str]]  # per variant: line after the leading id, split at the photo id
    photo_license: list[int]  # per variant: index into LICENSE_CODES
    photo_host: list[str]
    sound_frags: list[str]
    tags: set[str] = field(default_factory=set)


# Keyword overrides for the first templates, so every archive shows every quirk at least once.
_QUIRK_RECIPES: tuple[dict, ...] = (
    {"user": _USERS[0]},
    {"user": _USERS[1], "remark": _HTML_REMARKS[1]},
    {"user": _USERS[2]},
    {"user": _USERS[3], "date_only": True},
    {"user": _USERS[4], "https": True},
    {"place": _NAMIBIA[0], "taxon": _TAXON["Welwitschia mirabilis"], "https": False},
    {"place": _NAMIBIA[1], "taxon": _TAXON["Oryx gazella"]},
    {"place": _EQUATOR},
    {"place": _MERIDIAN, "date_only": True},
    {"date_only": False, "captive": "cultivated", "taxon": _TAXON["Quercus agrifolia"]},
    {"taxon": _TAXON["Eschscholzia californica"], "reproductive": "flowering|fruiting"},
    {"remark": "long"},
    {"remark": ""},
    {"remark": None},
    {"remark": _LINE_SEPARATOR_REMARK},
    {"projects": 3, "dynamic": _ANNOTATIONS[2]},
)


class _TemplateBuilder:
    """Renders random but internally consistent observation rows and their media rows."""

    def __init__(self, spec: SampleSpec, rnd: random.Random) -> None:
        self.spec = spec
        self.rnd = rnd
        self.columns = observation_columns(spec.layout, spec.extra_columns)
        self.export_day = _EXPORT_DAY[spec.layout]

    def build(self, count: int) -> list[_Template]:
        kingdoms = self._kingdom_plan(count)
        out = []
        for i in range(count):
            recipe = dict(_QUIRK_RECIPES[i]) if i < len(_QUIRK_RECIPES) else {}
            if "taxon" not in recipe:
                recipe["taxon"] = self.rnd.choice([t for t in _TAXA if t.kingdom == kingdoms[i]])
            # The first seven templates carry the seven licences, so every archive has them all.
            first_license = LICENSE_CODES[i] if i < len(LICENSE_CODES) else None
            out.append(self._template(recipe, first_license))
        return out

    def _kingdom_plan(self, count: int) -> list[str]:
        # Exact shares (largest remainder), shuffled, so Plantae is ~40 % even in tiny pools.
        quotas = {k: int(share * count) for k, share in _KINGDOM_SHARE.items()}
        for k in sorted(_KINGDOM_SHARE, key=lambda k: -(_KINGDOM_SHARE[k] * count % 1)):
            if sum(quotas.values()) < count:
                quotas[k] += 1
        plan = [k for k, n in quotas.items() for _ in range(n)]
        self.rnd.shuffle(plan)
        return plan

    # ---- observation row ----------------------------------------------------------------
    def _template(self, recipe: dict, first_license: str | None) -> _Template:
        rnd = self.rnd
        taxon: _Taxon = recipe["taxon"]
        user: _User = recipe.get("user") or rnd.choice(_USERS)
        place = recipe.get("place") or self._place_for(taxon)
        date_only = recipe.get("date_only", rnd.random() < 0.15)
        https = recipe.get("https", self.spec.layout == "48" and rnd.random() < 0.5)
        local = self._event_time()
        utc = local - timedelta(minutes=place.tz_minutes)
        record: dict[str, str | None] = dict.fromkeys(self.columns)
        identifier = rnd.choice(_USERS)
        lat, lon = self._coordinates(place)
        uncertainty = rnd.choice([None, None, str(rnd.randint(3, 500)), str(rnd.randint(5, 30))])
        withheld = None
        if rnd.random() < 0.05:
            uncertainty = str(rnd.randint(28000, 29999))
            reason = rnd.choice(["to protect threatened taxon", "at the request of the observer"])
            withheld = f"Coordinate uncertainty increased to {uncertainty}m {reason}"
        kingdom, phylum, klass, order, family, genus = taxon.lineage
        is_plant, is_animal = kingdom == "Plantae", kingdom == "Animalia"
        modified = utc + timedelta(
            days=rnd.randint(0, (self.export_day - utc.date()).days), seconds=rnd.randint(0, 86399)
        )
        identified = min(modified, utc + timedelta(hours=rnd.randint(0, 2000)))
        record.update(
            id=_ID,
            occurrenceID=f"{'https' if rnd.random() < 0.5 else 'http'}://www.inaturalist.org/observations/{_ID}",
            basisOfRecord="HumanObservation",
            modified=f"{modified:%Y-%m-%dT%H:%M:%SZ}",
            institutionCode="iNaturalist",
            collectionCode="Observations",
            datasetName="iNaturalist research-grade observations",
            informationWithheld=withheld,
            catalogNumber=_ID,
            references=f"https://www.inaturalist.org/observations/{_ID}",
            occurrenceRemarks=self._remark(recipe),
            recordedBy=user.display,
            recordedByID=f"https://orcid.org/{user.orcid}" if user.orcid else None,
            identifiedBy=identifier.display,
            identifiedByID=f"https://orcid.org/{identifier.orcid}" if identifier.orcid else None,
            captive=recipe.get("captive")
            or ("cultivated" if rnd.random() < (0.12 if is_plant else 0.02) else "wild"),
            eventDate=f"{local:%Y-%m-%d}"
            if date_only
            else f"{local:%Y-%m-%dT%H:%M:%S}{_offset(place.tz_minutes)}",
            eventTime=None if date_only else self._event_time_text(local, utc, place),
            verbatimEventDate=self._verbatim_date(local, date_only, place.tz_minutes),
            verbatimLocality=rnd.choice(place.localities),
            decimalLatitude=ruby_float(lat),
            decimalLongitude=ruby_float(lon),
            coordinateUncertaintyInMeters=uncertainty,
            geodeticDatum="EPSG:4326",
            countryCode=place.country,
            stateProvince=place.state,
            identificationID=str(rnd.randint(1_000_000, 600_000_000)),
            dateIdentified=f"{identified:%Y-%m-%dT%H:%M:%SZ}",
            identificationRemarks=rnd.choices(["", None, rnd.choice(_ID_REMARKS)], [75, 10, 15])[0],
            taxonID=str(taxon.taxon_id),
            scientificName=taxon.name,
            taxonRank=taxon.rank,
            kingdom=kingdom,
            phylum=phylum,
            order=order,
            family=family,
            genus=genus,
            license=license_url(
                rnd.choices(*zip(*_OBSERVATION_LICENSE_WEIGHTS.items(), strict=True))[0], https=https
            ),
            rightsHolder=user.display,
            inaturalistLogin=user.login,
            publishingCountry=rnd.choice(["GB", "IL", "US", place.country]) if rnd.random() < 0.15 else None,
            sex=rnd.choice(["male", "female"]) if is_animal and rnd.random() < 0.2 else None,
            lifeStage=rnd.choice(_LIFE_STAGES) if is_animal and rnd.random() < 0.35 else None,
            reproductiveCondition=recipe.get("reproductive")
            or (
                rnd.choice(_REPRODUCTIVE)
                if is_plant and rnd.random() < 0.4
                else rnd.choices(["", None], [80, 20])[0]
            ),
        )
        record["class"] = klass
        if self.spec.layout == "48":
            record.update(
                projectId=self._projects(recipe.get("projects")),
                vitality=rnd.choices(["alive", "dead", "", None], [10, 3, 47, 40])[0],
                dynamicProperties=self._dynamic(recipe),
            )
        # Columns the exporter appends on request; other extra names are written missing.
        for extra in self.spec.extra_columns:
            record[extra] = {
                "county": place.county,
                "publicLatitude": record["decimalLatitude"],
                "publicLongitude": record["decimalLongitude"],
                "otherCatalogueNumbers": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            }.get(extra)
        line = csv_line(record[c] for c in self.columns).rstrip("\n")
        template = _Template(
            record=record,
            kingdom=KINGDOMS.index(kingdom),
            obs_frags=line.split(_ID),
            photo_frags=[],
            photo_license=[],
            photo_host=[],
            sound_frags=[],
            tags=quirk_tags(record),
        )
        self._add_media(template, user, local, date_only, record["license"] or "", first_license)
        return template

    def _place_for(self, taxon: _Taxon) -> _Place:
        places = _PLACES + _NAMIBIA
        if taxon.countries:
            places = tuple(p for p in places if p.country in taxon.countries)
        return self.rnd.choice(places)

    def _event_time(self) -> datetime:
        start = datetime(2008, 1, 1)
        span = (
            datetime.combine(self.export_day, datetime.min.time()) - timedelta(days=30) - start
        ).total_seconds()
        return start + timedelta(seconds=int(self.rnd.random() * span))

    def _event_time_text(self, local: datetime, utc: datetime, place: _Place) -> str:
        # Older exports wrote the UTC time with Z, current ones the local time with its offset.
        if self.spec.layout == "45":
            return f"{utc:%H:%M:%S}Z"
        return f"{local:%H:%M:%S}{_offset(place.tz_minutes)}"

    def _verbatim_date(self, local: datetime, date_only: bool, tz_minutes: int) -> str | None:
        # Whatever the observer's app or browser sent; kept verbatim.
        if date_only:
            return self.rnd.choice([f"{local:%Y-%m-%d}", f"{local:%B} {local.day}, {local:%Y}", None])
        return self.rnd.choice(
            [
                f"{local:%B} {local.day}, {local:%Y %H:%M}",
                f"{local:%Y-%m-%d %H:%M:%S}",
                f"{local:%d/%m/%Y %H:%M:%S}",
                f"{local:%Y/%m/%d} {local.hour % 12 or 12}:{local:%M %p}",
                f"{local:%a %b %d %Y %H:%M:%S} GMT{_offset(tz_minutes).replace(':', '')}",
            ]
        )

    def _coordinates(self, place: _Place) -> tuple[float, float]:
        if place.spread == 0:
            return place.lat, place.lon
        jitter = self.rnd.uniform
        # The database keeps 10 decimals; Ruby prints the shortest repr of that.
        return (
            round(place.lat + jitter(-place.spread, place.spread), 10),
            round(place.lon + jitter(-place.spread, place.spread), 10),
        )

    def _remark(self, recipe: dict) -> str | None:
        # About half the real rows have no remark; long ones are rare but exist.
        kind = self.rnd.choices(["missing", "empty", "short", "html", "long"], [54, 5, 30, 10, 1])[0]
        remark = recipe.get("remark", kind)
        if remark == "long":
            return long_html_remark(self.rnd.randint(1200, 4000))
        if remark == "short":
            return self.rnd.choice(_SHORT_REMARKS)
        if remark == "html":
            return self.rnd.choice(_HTML_REMARKS)
        return {"missing": None, "empty": ""}.get(remark, remark)

    def _projects(self, count: int | None) -> str | None:
        if count is None:
            count = self.rnd.choice([1, 1, 2, 4]) if self.rnd.random() < 0.35 else 0
        ids = sorted(self.rnd.sample(range(600, 250_000), count))
        return "|".join(f"https://www.inaturalist.org/projects/{p}" for p in ids) or None

    def _dynamic(self, recipe: dict) -> str | None:
        value = (
            recipe.get("dynamic")
            or self.rnd.choices([None, "", self.rnd.choice(_ANNOTATIONS)], [50, 30, 20])[0]
        )
        return json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value

    # ---- media rows ---------------------------------------------------------------------
    def _add_media(
        self,
        template: _Template,
        user: _User,
        local: datetime,
        date_only: bool,
        obs_license: str,
        first: str | None,
    ) -> None:
        rnd = self.rnd
        # `created` carries the server's (Pacific) offset, not the observation's.
        created = (
            f"{local:%Y-%m-%d}"
            if date_only
            else f"{local:%Y-%m-%dT%H:%M:%S}{_offset(-420 if 3 <= local.month <= 10 else -480)}"
        )
        https = obs_license.startswith("https")
        own_code = next((c for c in LICENSE_CODES if license_url(c, https=https) == obs_license), "CC-BY-NC")
        for variant in range(_PHOTO_VARIANTS):
            code = first if variant == 0 and first else own_code
            if variant and rnd.random() < 0.3:
                code = rnd.choices(LICENSE_CODES, _MEDIA_LICENSE_WEIGHTS)[0]
            ext, mime, _ = rnd.choices(_PHOTO_EXTENSIONS, [w for *_, w in _PHOTO_EXTENSIONS])[0]
            host = OPEN_DATA_PHOTOS if code in OPEN_LICENSES and rnd.random() < 0.9 else STATIC_PHOTOS
            url = f"{host}/{_MEDIA_ID}/original.{ext}"
            page = f"https://www.inaturalist.org/photos/{_MEDIA_ID}"
            frags = _media_frags(
                "StillImage", mime, url, page, created, user.display, license_url(code, https=https)
            )
            template.photo_frags.append(frags)
            template.photo_license.append(LICENSE_CODES.index(code))
            template.photo_host.append(host.split("/")[2])
        url, page = f"{STATIC_SOUNDS}/{_MEDIA_ID}.mp3", f"https://www.inaturalist.org/sounds/{_MEDIA_ID}"
        sound_license = license_url(rnd.choices(LICENSE_CODES, _MEDIA_LICENSE_WEIGHTS)[0], https=https)
        template.sound_frags = _media_frags(
            "Sound", "audio/mpeg", url, page, created, user.display, sound_license
        )


def _media_frags(
    kind: str, mime: str, url: str, page: str, created: str | None, name: str | None, license: str
) -> list[str]:
    """A media line after its leading observation id, split where the photo / sound id goes."""
    # The creator is also the rights holder, and iNaturalist is the publisher of uploads.
    row = (_ID, kind, mime, url, page, created, name, "iNaturalist", license, name, _MEDIA_ID)
    line = csv_line(row).rstrip("\n")
    return line[len(_ID) :].split(_MEDIA_ID)


def _offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def long_html_remark(size: int) -> str:
    """An HTML occurrenceRemarks of exactly ``size`` bytes (ASCII, so bytes == characters)."""
    return (_LONG_HTML_UNIT * (size // len(_LONG_HTML_UNIT) + 1))[:size]


# --------------------------------------------------------------------------------------------
# The per-row plan (numpy): ids, templates, photo counts, sounds
# --------------------------------------------------------------------------------------------

_POOL = 4096  # row templates; more adds little realism and costs start-up time
_CHUNK = 20_000  # observations per chunk handed to the zip writer (bounds memory)
_ZIP64_FROM = 2**31 - 2**24  # member size from which zipfile must be told to use ZIP64


@dataclass
class _Plan:
    ids: np.ndarray  # observation ids, file order
    tidx: np.ndarray  # template per observation
    nphotos: np.ndarray
    has_sound: np.ndarray
    photo_ids: np.ndarray  # all photo ids, in file order
    photo_start: np.ndarray  # photo_ids[photo_start[r]:photo_start[r + 1]] belong to row r
    sound_ids: np.ndarray
    sound_rank: np.ndarray  # row r's sound is sound_ids[sound_rank[r]] (when has_sound[r])


def _plan(spec: SampleSpec, rng: np.random.Generator, pool: int) -> _Plan:
    n = spec.observations
    # Ascending with gaps of >= 2, so id + 1 is never a real row (orphans and bad lines use it)...
    ids = 1_000_000 + int(rng.integers(0, 1_000_000)) + np.cumsum(rng.integers(2, 60, n))
    # ...and "ascending-ish": a few neighbours swapped, as in the real export.
    swap = np.arange(7, n - 1, 997)
    ids[swap], ids[swap + 1] = ids[swap + 1], ids[swap].copy()
    # Every template once (all quirks present), then random picks from the pool.
    tidx = np.concatenate([rng.permutation(pool), rng.integers(0, pool, n - pool)])
    nphotos = np.minimum(rng.poisson(spec.mean_photos - 1, n) + 1, 20)
    has_sound = rng.random(n) < spec.sound_share
    if spec.sound_share > 0 and not has_sound.any():
        has_sound[n // 3] = True
    nphotos[has_sound & (rng.random(n) < 0.5)] = 0  # sound-only observations
    sound_ids = 100_000 + np.cumsum(rng.integers(1, 40, int(has_sound.sum())))
    first_photo = max(3 * int(ids[0]), int(sound_ids.max(initial=0)) + 1000)
    photo_ids = first_photo + np.cumsum(rng.integers(1, 6, int(nphotos.sum())))
    if len(sound_ids) and len(photo_ids):
        # Photo and sound ids are separate sequences that overlap: make a fifth of them collide.
        k = min(max(1, len(sound_ids) // 5), len(photo_ids))
        sound_ids[rng.choice(len(sound_ids), k, replace=False)] = rng.choice(photo_ids, k, replace=False)
    return _Plan(
        ids=ids,
        tidx=tidx,
        nphotos=nphotos,
        has_sound=has_sound,
        photo_ids=photo_ids,
        photo_start=np.concatenate([[0], np.cumsum(nphotos)]),
        sound_ids=sound_ids,
        sound_rank=np.cumsum(has_sound) - 1,
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@contextmanager
def _new_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """A zip that appears under ``path`` only once complete, readable like a normal download."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            yield zf
        tmp.chmod(0o644)  # mkstemp made it owner-only


def _member(zf: zipfile.ZipFile, name: str, day: date, level: int, large: bool = False) -> IO[bytes]:
    # A fixed timestamp makes the same seed give the same zip bytes.
    info = zipfile.ZipInfo(name, date_time=(day.year, day.month, day.day, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    # ZipInfo has no public level setter before Python 3.13; 3.13+ keeps _compresslevel as an alias.
    info._compresslevel = level  # type: ignore[attr-defined]
    return zf.open(info, "w", force_zip64=large)


@dataclass
class _MediaCounts:
    """Valid, non-orphan media rows written, counted per chunk from the arrays that made them."""

    by_kingdom: np.ndarray  # StillImage rows per KINGDOMS index
    by_license: np.ndarray  # per LICENSE_CODES index
    by_host: np.ndarray  # per entry of .hosts
    hosts: list[str] = field(default_factory=list)
    sounds: int = 0

    @property
    def still_images(self) -> int:
        return int(self.by_kingdom.sum())


@dataclass
class _Specials:
    """Lines that are not stamped from the plan: orphans, malformed lines, the huge remark."""

    obs_after: dict[int, list[str]] = field(default_factory=dict)  # row -> lines written after it
    obs_replace: dict[int, str] = field(default_factory=dict)  # row -> line written instead
    media_after: dict[int, list[str]] = field(default_factory=dict)  # after the row's media
    bad_observations: list[str] = field(default_factory=list)
    bad_media: list[str] = field(default_factory=list)
    orphan_ids: list[int] = field(default_factory=list)
    orphan_photo_ids: list[int] = field(default_factory=list)
    orphan_hosts: list[str] = field(default_factory=list)
    long_row: int | None = None


def _specials(
    spec: SampleSpec,
    templates: list[_Template],
    plan: _Plan,
    columns: Sequence[str],
    rng: np.random.Generator,
) -> _Specials:
    n = spec.observations
    out = _Specials()
    # Distinct rows: orphans point at id + 1 of theirs, bad observation lines use id + 1 too.
    rows = [int(r) for r in rng.choice(n, spec.orphan_media + 3, replace=False)]
    orphan_rows, bad_rows = sorted(rows[: spec.orphan_media]), rows[spec.orphan_media :]
    free_photo_id = int(plan.photo_ids.max(initial=plan.ids[-1] * 3)) + 2  # above every photo id
    for row in orphan_rows:
        template = templates[plan.tidx[row]]
        obs_id = int(plan.ids[row]) + 1
        line = str(obs_id) + str(free_photo_id).join(template.photo_frags[0])
        out.media_after.setdefault(row, []).append(line)
        out.orphan_ids.append(obs_id)
        out.orphan_photo_ids.append(free_photo_id)
        out.orphan_hosts.append(template.photo_host[0])
        free_photo_id += 2
    if spec.malformed_lines:
        out.bad_observations = _malformed_observation_lines(templates, plan, columns, bad_rows)
        for row, line in zip(bad_rows, out.bad_observations, strict=True):
            out.obs_after.setdefault(row, []).append(line)
        media_rows = (n // 3, 2 * n // 3)
        out.bad_media = _malformed_media_lines(templates, plan, media_rows, free_photo_id)
        for row, line in zip(media_rows, out.bad_media, strict=True):
            out.media_after.setdefault(row, []).append(line)
    if spec.long_remark_bytes:
        out.long_row = n // 2
        record = dict(templates[plan.tidx[out.long_row]].record)
        record["occurrenceRemarks"] = long_html_remark(spec.long_remark_bytes)
        line = csv_line(record[c] for c in columns).rstrip("\n")
        out.obs_replace[out.long_row] = line.replace(_ID, str(plan.ids[out.long_row]))
    return out


def write_sample_archive(path: Path, spec: SampleSpec = SampleSpec()) -> SampleArchiveInfo:
    """Write a sample archive to ``path`` (atomically) and describe what it holds."""
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    pool = min(spec.observations, _POOL)
    builder = _TemplateBuilder(spec, random.Random(spec.seed))
    columns = builder.columns
    templates = builder.build(pool)
    plan = _plan(spec, rng, pool)
    special = _specials(spec, templates, plan, columns, rng)

    day = _EXPORT_DAY[spec.layout]
    level = spec.compresslevel
    # zipfile must know up front whether a member may pass 2 GiB (ZIP64). Templates are drawn
    # uniformly, so n * mean template length (+25 % for ids and chance) bounds the size.
    obs_bytes = spec.observations * np.mean([len("".join(t.obs_frags)) for t in templates]) * 1.25
    obs_bytes += spec.long_remark_bytes
    media_rows = len(plan.photo_ids) + len(plan.sound_ids)
    media_bytes = media_rows * np.mean([len("".join(f)) for t in templates for f in t.photo_frags]) * 1.25
    with _new_zip(path) as zf:
        with _member(zf, "meta.xml", day, level) as fh:
            fh.write(meta_xml(columns, eml_name(spec.layout)).encode())
        with _member(zf, eml_name(spec.layout), day, level) as fh:
            fh.write(eml_xml(day).encode())
        with _member(zf, "observations.csv", day, level, large=obs_bytes > _ZIP64_FROM) as fh:
            observations = _write_observations(
                fh, templates, plan, columns, special.obs_after, special.obs_replace
            )
        with _member(zf, "media.csv", day, level, large=media_bytes > _ZIP64_FROM) as fh:
            media = _write_media(fh, templates, plan, special.media_after)

    orphans = len(special.orphan_ids)
    by_host = Counter(dict(zip(media.hosts, map(int, media.by_host), strict=True))) + Counter(
        special.orphan_hosts
    )
    all_photo_ids = np.concatenate([plan.photo_ids, special.orphan_photo_ids])
    return SampleArchiveInfo(
        path=path,
        layout=spec.layout,
        observation_columns=columns,
        observations_valid=observations,
        observations_malformed=len(special.bad_observations),
        media_valid=media.still_images + media.sounds + orphans,
        media_malformed=len(special.bad_media),
        still_images=media.still_images + orphans,
        sounds=media.sounds,
        orphan_media=orphans,
        photos_by_kingdom=dict(zip(KINGDOMS, map(int, media.by_kingdom), strict=True)),
        photos_by_license=dict(zip(LICENSE_CODES, map(int, media.by_license), strict=True)),
        photos_by_host=dict(sorted(by_host.items())),
        sound_ids_colliding_with_photos=int(np.isin(plan.sound_ids, all_photo_ids).sum()),
        quirk_observation_ids=_quirk_ids(templates, plan, special.long_row),
        long_remark_observation_id=None if special.long_row is None else int(plan.ids[special.long_row]),
        orphan_observation_ids=tuple(special.orphan_ids),
        malformed_observation_lines=tuple(special.bad_observations),
        malformed_media_lines=tuple(special.bad_media),
        min_observation_id=int(plan.ids.min()),
        max_observation_id=int(plan.ids.max()),
    )


def _quirk_ids(templates: list[_Template], plan: _Plan, skip_row: int | None) -> dict[str, tuple[int, ...]]:
    """The first three observation ids (file order) per quirk tag."""
    usable = np.ones(len(plan.ids), dtype=bool)
    if skip_row is not None:
        usable[skip_row] = False  # its remark was replaced, so its template's tags may not hold
    out = {}
    for tag in sorted({tag for t in templates for tag in t.tags}):
        has_tag = np.array([tag in t.tags for t in templates])
        rows = np.flatnonzero(has_tag[plan.tidx] & usable)[:3]
        out[tag] = tuple(int(plan.ids[r]) for r in rows)
    return out


def _write_observations(
    fh: IO[bytes],
    templates: list[_Template],
    plan: _Plan,
    columns: Sequence[str],
    after: Mapping[int, list[str]],
    replace: Mapping[int, str],
) -> int:
    """Stamp every planned row into ``fh``; returns how many valid rows that made."""
    # Bytes throughout: no encode pass, and no 2-4x wide str for chunks holding CJK names.
    frags = [[f.encode() for f in t.obs_frags] for t in templates]
    fh.write(csv_line(columns).encode())
    written = 0
    for start in range(0, len(plan.ids), _CHUNK):
        stop = min(start + _CHUNK, len(plan.ids))
        ids = [b"%d" % i for i in plan.ids[start:stop].tolist()]
        lines = [i.join(frags[t]) for i, t in zip(ids, plan.tidx[start:stop].tolist(), strict=True)]
        for row, line in replace.items():
            if start <= row < stop:
                lines[row - start] = line.encode()
        for row in sorted((r for r in after if start <= r < stop), reverse=True):
            lines[row - start + 1 : row - start + 1] = [line.encode() for line in after[row]]
        fh.write(b"\n".join(lines) + b"\n")
        written += stop - start
    return written


def _write_media(
    fh: IO[bytes], templates: list[_Template], plan: _Plan, after: Mapping[int, list[str]]
) -> _MediaCounts:
    # One table of line fragments per (template t, slot v): v < 8 is photo variant v, v = 8 the sound.
    slots = _PHOTO_VARIANTS + 1
    table = [[f.encode() for f in frags] for t in templates for frags in (*t.photo_frags, t.sound_frags)]
    license_of = np.array([v for t in templates for v in (*t.photo_license, -1)])
    hosts = sorted({h for t in templates for h in t.photo_host})
    host_of = np.array([hosts.index(h) if h else -1 for t in templates for h in (*t.photo_host, "")])
    kingdom_of = np.array([t.kingdom for t in templates])
    # Padding makes the masked-out lookups below safe when there are no photos or no sounds.
    photo_ids = np.append(plan.photo_ids, 0)
    sound_ids = np.append(plan.sound_ids, 0)
    counts = _MediaCounts(
        np.zeros(len(KINGDOMS), int), np.zeros(len(LICENSE_CODES), int), np.zeros(len(hosts), int)
    )
    fh.write(csv_line(MEDIA_COLUMNS).encode())
    for start in range(0, len(plan.ids), _CHUNK):
        stop = min(start + _CHUNK, len(plan.ids))
        rows = np.arange(start, stop)
        # One item per media row: its observation row and its slot within that observation.
        per_row = plan.nphotos[rows] + plan.has_sound[rows]
        row_of = np.repeat(rows, per_row)
        first = np.cumsum(per_row) - per_row
        slot = np.arange(len(row_of)) - np.repeat(first, per_row)
        is_sound = slot == plan.nphotos[row_of]  # a row's sound comes after its photos
        photo_index = np.minimum(plan.photo_start[row_of] + slot, len(photo_ids) - 1)
        media_id = np.where(is_sound, sound_ids[plan.sound_rank[row_of]], photo_ids[photo_index])
        code = plan.tidx[row_of] * slots + np.where(is_sound, _PHOTO_VARIANTS, slot % _PHOTO_VARIANTS)

        obs = [b"%d" % i for i in plan.ids[row_of].tolist()]
        mids = [b"%d" % i for i in media_id.tolist()]
        lines = [o + m.join(table[c]) for o, m, c in zip(obs, mids, code.tolist(), strict=True)]
        for row in sorted((r for r in after if start <= r < stop), reverse=True):
            at = int(first[row - start] + per_row[row - start])
            lines[at:at] = [line.encode() for line in after[row]]
        if lines:
            fh.write(b"\n".join(lines) + b"\n")

        photo_codes = code[~is_sound]
        counts.sounds += int(is_sound.sum())
        counts.by_kingdom += np.bincount(kingdom_of[photo_codes // slots], minlength=len(KINGDOMS))
        counts.by_license += np.bincount(license_of[photo_codes], minlength=len(LICENSE_CODES))
        counts.by_host += np.bincount(host_of[photo_codes], minlength=len(hosts))
    counts.hosts = hosts
    return counts


def _malformed_observation_lines(
    templates: list[_Template], plan: _Plan, columns: Sequence[str], rows: Sequence[int]
) -> list[str]:
    """Three single-record lines a converter must reject: too few columns, too many, id 'abc'."""
    lines = []
    for kind, row in zip(("too_few", "too_many", "bad_id"), rows, strict=True):
        # One physical line each: drop newlines from the names this template may carry.
        record = {c: v.replace("\n", " ") if v else v for c, v in templates[plan.tidx[row]].record.items()}
        fields = [csv_field(record[c]) for c in columns]
        if kind == "too_few":
            fields = fields[:20]
        elif kind == "too_many":
            # The realistic way to get extra columns: an unquoted field containing commas.
            fields[columns.index("verbatimLocality")] = "Swakopmund, Erongo, Namibia"
        bad_id = "abc" if kind == "bad_id" else str(int(plan.ids[row]) + 1)
        lines.append(",".join(fields).replace(_ID, bad_id))
    return lines


def _malformed_media_lines(
    templates: list[_Template], plan: _Plan, rows: Sequence[int], free_photo_id: int
) -> list[str]:
    """Two single-record media lines to reject: a non-integer catalogNumber, too few columns.

    Both name real observations, so only the line itself is wrong."""
    bad_number_row, short_row = rows
    frags = templates[plan.tidx[bad_number_row]].photo_frags[0]
    bad_number = str(plan.ids[bad_number_row]) + "IMG_4021".join(frags)
    photo_url = f"{STATIC_PHOTOS}/{free_photo_id}/original.jpg"
    too_few = f"{plan.ids[short_row]},StillImage,image/jpeg,{photo_url},https://www.inaturalist.org/photos/{free_photo_id}"
    return [bad_number, too_few]


# --------------------------------------------------------------------------------------------
# meta.xml and EML
# --------------------------------------------------------------------------------------------


def eml_name(layout: str) -> str:
    # Exports before 2025-01-09 (the 45-column layout) called it metadata.eml.xml.
    return "metadata.eml.xml" if layout == "45" else "eml.xml"


def meta_xml(observation_columns: Sequence[str], metadata: str = "eml.xml") -> str:
    """meta.xml as iNaturalist's dwc_descriptor builder writes it, for this observations header."""

    def fields(columns: Sequence[str]) -> list[str]:
        out = []
        for index, column in enumerate(columns[1:], start=1):
            default = f" default={quoteattr(_TERM_DEFAULTS[column])}" if column in _TERM_DEFAULTS else ""
            out.append(f'    <field index="{index}"{default} term={quoteattr(term_uri(column))}/>')
        return out

    dialect = 'encoding="UTF-8" fieldsTerminatedBy="," linesTerminatedBy="\\n" fieldsEnclosedBy="&quot;" ignoreHeaderLines="1"'
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata={quoteattr(metadata)}>',
            f'  <core {dialect} rowType="http://rs.tdwg.org/dwc/terms/Occurrence">',
            "    <files>",
            "      <location>observations.csv</location>",
            "    </files>",
            '    <id index="0"/>',
            *fields(observation_columns),
            "  </core>",
            f'  <extension {dialect} rowType="http://rs.gbif.org/terms/1.0/Multimedia">',
            "    <files>",
            "      <location>media.csv</location>",
            "    </files>",
            '    <coreid index="0"/>',
            *fields(MEDIA_COLUMNS),
            "  </extension>",
            "</archive>",
            "",
        ]
    )


def eml_xml(day: date) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="eml://ecoinformatics.org/eml-2.1.1 http://rs.gbif.org/schema/eml-gbif-profile/1.1/eml.xsd" packageId="inat-assets-sample-{day:%Y%m%d}" system="https://www.inaturalist.org" scope="system" xml:lang="en">
  <dataset>
    <title>iNaturalist Research-grade Observations (synthetic sample)</title>
    <creator>
      <organizationName>iNaturalist</organizationName>
      <onlineUrl>https://www.inaturalist.org</onlineUrl>
    </creator>
    <pubDate>{day:%Y-%m-%d}</pubDate>
    <language>en</language>
    <abstract>
      <para>Generated by inat_assets.testing.sample in the layout of iNaturalist's research-grade Darwin Core Archive. The rows are synthetic, not real observations.</para>
    </abstract>
    <intellectualRights>
      <para>Each record carries its own Creative Commons licence in the license column.</para>
    </intellectualRights>
  </dataset>
</eml:eml>
"""


# --------------------------------------------------------------------------------------------
# Wrapping real observation rows
# --------------------------------------------------------------------------------------------


def detect_layout(columns: Sequence[str]) -> str:
    """'48' or '45' when the header starts with that layout (extra columns may follow), else 'unknown'."""
    for layout, base in (("48", OBSERVATION_COLUMNS_48), ("45", OBSERVATION_COLUMNS_45)):
        if tuple(columns[: len(base)]) == base:
            return layout
    return "unknown"


def archive_from_observations_csv(
    observations_csv: Path,
    path: Path,
    *,
    seed: int = 0,
    photos_per_observation: int | tuple[int, int] = (1, 3),
) -> SampleArchiveInfo:
    """Zip real observation rows (copied byte for byte) with generated media rows for their ids.

    ``photos_per_observation`` is a fixed count or an inclusive (low, high) range drawn per row.
    Rows with the wrong number of fields or a non-integer id count as malformed and get no media.
    """
    raw = Path(observations_csv).read_bytes()
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    header = tuple(next(reader))
    low, high = (
        (photos_per_observation, photos_per_observation)
        if isinstance(photos_per_observation, int)
        else photos_per_observation
    )
    rnd = random.Random(seed)
    rows, malformed = [], 0
    for values in reader:
        if len(values) == len(header) and values[0].isascii() and values[0].isdigit():
            rows.append(dict(zip(header, values, strict=True)))
        else:
            malformed += 1

    max_id = max((int(r["id"]) for r in rows), default=0)
    next_photo = 10 * max_id + 1000  # photo ids outgrow observation ids in the real archive
    media_lines = [csv_line(MEDIA_COLUMNS)]
    by_kingdom: Counter[str] = Counter()
    by_license: Counter[str] = Counter()
    by_host: Counter[str] = Counter()
    for row in rows:
        name = row.get("rightsHolder") or row.get("recordedBy") or row.get("inaturalistLogin") or None
        https = (row.get("license") or "").startswith("https")
        for _ in range(rnd.randint(low, high)):
            next_photo += rnd.randint(1, 5)
            code = LICENSE_CODES[next_photo % len(LICENSE_CODES)]
            ext, mime, _ = rnd.choices(_PHOTO_EXTENSIONS, [w for *_, w in _PHOTO_EXTENSIONS])[0]
            host = OPEN_DATA_PHOTOS if code in OPEN_LICENSES else STATIC_PHOTOS
            url = f"{host}/{_MEDIA_ID}/original.{ext}"
            page = f"https://www.inaturalist.org/photos/{_MEDIA_ID}"
            created = row.get("eventDate") or None
            frags = _media_frags("StillImage", mime, url, page, created, name, license_url(code, https=https))
            media_lines.append(row["id"] + str(next_photo).join(frags) + "\n")
            by_kingdom[row.get("kingdom") or ""] += 1
            by_license[code] += 1
            by_host[host.split("/")[2]] += 1

    layout = detect_layout(header)
    day = _EXPORT_DAY.get(layout, _EXPORT_DAY["48"])
    metadata = eml_name(layout)
    path = Path(path)
    with _new_zip(path) as zf:
        for name, data in (
            ("meta.xml", meta_xml(header, metadata).encode()),
            (metadata, eml_xml(day).encode()),
            ("observations.csv", raw),
            ("media.csv", "".join(media_lines).encode()),
        ):
            with _member(zf, name, day, 6) as fh:
                fh.write(data)

    quirk_ids: dict[str, list[int]] = {}
    for row in rows:
        for tag in quirk_tags(row):
            ids = quirk_ids.setdefault(tag, [])
            if len(ids) < 3:
                ids.append(int(row["id"]))
    photos = len(media_lines) - 1
    ids = [int(r["id"]) for r in rows]
    return SampleArchiveInfo(
        path=path,
        layout=layout,
        observation_columns=header,
        observations_valid=len(rows),
        observations_malformed=malformed,
        media_valid=photos,
        media_malformed=0,
        still_images=photos,
        sounds=0,
        orphan_media=0,
        photos_by_kingdom=dict(sorted(by_kingdom.items())),
        photos_by_license={c: by_license[c] for c in LICENSE_CODES},
        photos_by_host=dict(sorted(by_host.items())),
        sound_ids_colliding_with_photos=0,
        quirk_observation_ids={k: tuple(v) for k, v in sorted(quirk_ids.items())},
        long_remark_observation_id=None,
        orphan_observation_ids=(),
        malformed_observation_lines=(),
        malformed_media_lines=(),
        min_observation_id=min(ids, default=None),
        max_observation_id=max(ids, default=None),
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inat_assets.testing.sample",
        description="Write a realistic sample iNaturalist Darwin Core Archive and print what it holds as JSON.",
    )
    parser.add_argument("out", type=Path, help="the .zip to write")
    defaults = SampleSpec()
    parser.add_argument("--observations", type=int, default=defaults.observations)
    parser.add_argument("--layout", choices=("45", "48"), default=defaults.layout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--extra-column", action="append", default=[], dest="extra_columns", help="repeatable, e.g. county"
    )
    parser.add_argument(
        "--no-malformed", action="store_false", dest="malformed_lines", help="no malformed lines"
    )
    parser.add_argument("--orphan-media", type=int, default=defaults.orphan_media)
    parser.add_argument("--long-remark-bytes", type=int, default=defaults.long_remark_bytes)
    parser.add_argument("--mean-photos", type=float, default=defaults.mean_photos)
    parser.add_argument("--sound-share", type=float, default=defaults.sound_share)
    parser.add_argument("--compresslevel", type=int, choices=range(10), default=defaults.compresslevel)
    parser.add_argument(
        "--from-observations-csv", type=Path, help="wrap these real rows instead of generating"
    )
    args = parser.parse_args(argv)
    if args.from_observations_csv:
        info = archive_from_observations_csv(args.from_observations_csv, args.out, seed=args.seed)
    else:
        options = {k: v for k, v in vars(args).items() if k not in ("out", "from_observations_csv")}
        options["extra_columns"] = tuple(options["extra_columns"])
        info = write_sample_archive(args.out, SampleSpec(**options))
    print(info.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

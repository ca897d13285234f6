"""The e2e GraphQL client's queries and mutations are valid against the installed Dagster's schema."""

import pytest
from dagster_graphql.schema import create_schema
from graphql import parse, validate

from inat_assets_tests.e2e.graphql_client import DOCUMENTS


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.split("(")[0].split("{")[0].split()[-1])
def test_graphql_document_matches_installed_dagster_schema(document: str) -> None:
    errors = validate(create_schema().graphql_schema, parse(document))
    assert not errors, [e.message for e in errors]

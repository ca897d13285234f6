"""Dagster Components of inat-assets: a declared dataset (``type: inat_assets.components.InatDataset``)."""

from inat_assets.components.dataset import DatasetDeclarationError, InatDataset, dataset_definitions

__all__ = ["DatasetDeclarationError", "InatDataset", "dataset_definitions"]

"""Partitions shared between stages: fetch_parquet registers the image batches that image_batches downloads."""

from dagster import DynamicPartitionsDefinition

# Keys are batch-NNNNNN photo-id ranges (see inat_assets.batches).
image_batch_partitions = DynamicPartitionsDefinition(name="image_batches")

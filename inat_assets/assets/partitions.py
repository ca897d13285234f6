"""Image batch partitions: each dataset's fetch_parquet registers the keys its image_batches download."""

from dagster import DynamicPartitionsDefinition


def image_batch_partitions(dataset: str) -> DynamicPartitionsDefinition:
    """``<dataset>_image_batches``: keys are batch-NNNNNN photo-id ranges (see inat_assets.batches)."""
    return DynamicPartitionsDefinition(name=f"{dataset}_image_batches")

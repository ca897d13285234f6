"""Training-ready datasets from downloaded batches: index, leak-free splits, caps, licences, exports.

Plain Python over DuckDB and pyarrow (no Dagster); the dataset asset and ``inat-assets report``
call ``build_training_dataset`` and ``summary_text``.
"""

from inat_assets.training.dataset import TrainingDatasetResult, build_training_dataset
from inat_assets.training.options import TrainingOptions
from inat_assets.training.report import summary_text

__all__ = ["TrainingDatasetResult", "TrainingOptions", "build_training_dataset", "summary_text"]

"""Datasets: a registry of builders, each returning one of the two ways data reaches the loop (kdrun.data.base)."""

# Importing the modules registers them (they import kdrun.data.base, never this package).
from kdrun.data import fake, mnist1d, stream, vision  # noqa: F401
from kdrun.data.base import (  # noqa: F401
                             DATASETS,
                             EVAL_BATCH,
                             Augment,
                             Batch,
                             EpochPlan,
                             TensorData,
                             batch_sizes,
                             holdout,
                             load_dataset,
                             register_dataset,
)

"""kdrun's stacked launcher: `hydra/launcher=stacked` trains compatible jobs of a sweep as one model."""

"""Patient-grouped K-fold cross-validation: fold runs, out-of-fold pooling and fold ensembles."""

from histofuse.crossval.runner import fold_dir, is_crossval_dir, run_cross_validation

__all__ = ["fold_dir", "is_crossval_dir", "run_cross_validation"]

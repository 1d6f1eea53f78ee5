"""Evaluating a trained model on the test split and on external sets.

Everything fitted for evaluation comes from the run's own data: the decision
threshold and temperature from the validation split, the stain normalizer and
the colour-only baseline from the training split. External sets get optional
quality control, stain normalization and TTA, each reported in their metrics.
"""


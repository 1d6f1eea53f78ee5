"""Data handling shared by every dataset: decoding, splitting, loading."""

"""``histofuse plugin new``: a small, installable plugin package that passes its own test."""

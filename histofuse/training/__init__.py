"""Phased training on Accelerate."""

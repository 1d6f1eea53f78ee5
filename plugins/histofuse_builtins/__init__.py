"""histofuse's built-in plugins. Each module is its own entry point and uses only histofuse's public API."""

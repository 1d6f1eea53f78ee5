"""The web app a Space export copies: app.py is a file to copy, not a module histofuse imports."""

"""Sphinx configuration for glomseg's documentation."""

from __future__ import annotations

import glomseg

project = "glomseg"
author = "glomseg developers"
copyright = "2026, glomseg developers"
release = glomseg.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Nothing is fetched at build time (no intersphinx inventories): the build works offline.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = True
nitpicky = False

templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"glomseg {release}"

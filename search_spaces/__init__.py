"""Shipped search-space files (YAML); see docs/search_spaces.md."""

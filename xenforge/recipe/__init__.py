"""Recipes: the YAML model, its loading (extends, specs, release files) and checks."""

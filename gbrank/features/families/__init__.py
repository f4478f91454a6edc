"""The feature families, one module each; :mod:`gbrank.features.registry` lists them."""

"""gbrank: two-stage recommendation for e-commerce."""

__version__ = "0.1.0"

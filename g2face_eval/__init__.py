"""g2face-eval: reference benchmark suite for reversible face anonymization (with a faithful G2Face)."""

__version__ = "0.1.0"

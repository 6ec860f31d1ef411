"""brainjax: reconstruct the videos a person watched from their fMRI, in JAX/Flax."""

__version__ = "0.1.0"

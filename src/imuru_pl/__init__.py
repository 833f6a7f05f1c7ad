"""imuru-pl: an experiment framework for style-image-only handwritten text generation (Imuru)."""

__version__ = "0.1.0"

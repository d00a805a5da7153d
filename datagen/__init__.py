"""datagen: seed tasks in, curated instruction-tuning data and a fine-tuned model out."""

# The one place the version is written: pyproject reads it from here (dynamic version), and
# `datagen --version` reports the installed distribution's metadata, which therefore agrees.
__version__ = "0.2.0"

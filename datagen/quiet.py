"""Third-party progress bars off: datagen draws one bar per stage with requests, tokens and cost;
transformers' "Loading weights", datasets' "Saving the dataset" and sentence-transformers'
"Batches" printed inside it and broke its line. Turned off for the run, whatever `--no-progress`
says; a library imported later reads the same settings from the environment."""

from __future__ import annotations

import os
import sys

_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error"}


def quiet_library_bars() -> None:
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()

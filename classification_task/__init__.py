"""Nodule / no-nodule classification of chest radiographs with MedGemma + QLoRA."""

import logging

# On CPUs with AVX512-BF16, bitsandbytes (imported by peft) looks for an optional
# hub-hosted 4-bit kernel at import and logs a warning when it is absent. Its
# built-in fallback computes the same result, so that one logger is quieted.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

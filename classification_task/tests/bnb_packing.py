"""Run a 4-bit test with bitsandbytes' packed CPU kernel forced on or off, whatever the CPU.

`Linear4bit.__init__` (bitsandbytes/nn/modules.py) calls `has_avx512bf16()` once and keeps the
answer in `support_avx512bf16_for_cpu`. With it set, the layer's first eval forward without
gradients on the CPU repacks its weight (functional._convert_weight_packed_for_cpu) and every later
forward runs the AVX512-BF16 kernel; without it the weight stays as loaded and the generic
dequantize-and-matmul path runs. Patching the name the constructor calls therefore decides the mode
for every layer a model load creates (and fails loudly if bitsandbytes renames it). The packed
kernel itself is registered at import only on a CPU with AVX512-BF16 (backends/cpu/ops.py), so on
any other CPU the packed mode cannot run and is skipped.
"""

import bitsandbytes
import bitsandbytes.nn.modules
import pytest
from bitsandbytes.functional import has_avx512bf16

PACKING_MODES = ["packed", "unpacked"]


def force_cpu_packing(monkeypatch, mode: str) -> None:
    """Models loaded after this call pack their 4-bit weights on the CPU exactly when mode == "packed"."""
    if mode == "packed" and not has_avx512bf16():
        pytest.skip("this CPU lacks AVX512-BF16, which bitsandbytes' packed 4-bit CPU kernel needs")
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: mode == "packed")


def assert_packing(model, mode: str) -> None:
    """After an eval forward without gradients, every 4-bit layer is in the layout `mode` asks for."""
    layers = [m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert layers, "the model has no 4-bit layer"
    packed = {getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers}
    assert packed == {mode == "packed"}, f"4-bit layers packed: {packed}, expected mode {mode!r}"

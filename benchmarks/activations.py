"""Activation memory of a training step, counted on every operator call (benchmarks only).

- `ActivationMeter`: bytes of the tensors a forward pass leaves alive for
  backward (and the peak through backward).
- `training_step_bytes`: one training step of a model measured with it. With
  `fake=True` the step runs on fake tensors (same operators, shapes and dtypes,
  no arithmetic), so a full-size encoder is measured on a CPU.

Both use private torch APIs (`TorchDispatchMode`, `FakeTensorMode`), which is
why they live with the benchmarks and not in the product.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class ActivationMeter(TorchDispatchMode):
    """Counts the bytes of tensors created inside it that are still alive: now, and at their peak.

    Tensors made before entering (parameters, the input batch) are not counted.
    Views share their storage and count once. A storage's Python object lives
    exactly as long as the storage, so a finalizer on it tells when it is freed.
    """

    def __init__(self):
        super().__init__()
        self._tracked: set[int] = set()  # ids of the live storages counted
        self._live_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # An output sharing an input's storage (a view, an in-place result) allocated nothing:
        # the schema says so (it also holds for a parameter read as a fake), else the storages do.
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if id(storage) not in inputs and id(storage) not in self._tracked:
                    self._tracked.add(id(storage))
                    self._live_bytes += storage.nbytes()
                    weakref.finalize(storage, self._freed, id(storage), storage.nbytes())
        self.peak_bytes = max(self.peak_bytes, self._live_bytes)
        return out

    def _freed(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self._live_bytes -= nbytes

    def live_bytes(self) -> int:
        return self._live_bytes


def fake_tensors():
    """A context in which operators only compute shapes and dtypes (real parameters are read as fakes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def training_step_bytes(model, pixel_values: torch.Tensor, autocast_bf16: bool, fake: bool) -> dict:
    """Activation bytes of one training step of `model(pixel_values)`: alive after forward, peak through backward.

    bf16 autocast as on a GPU (train.py trains in bf16 where the GPU supports it).
    """
    model.train()
    meter = ActivationMeter()
    outer = fake_tensors() if fake else contextlib.nullcontext()
    with outer, meter:
        with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            logits = model(pixel_values)
        after_forward = meter.live_bytes()
        logits.float().mean().backward()
    return {"after_forward_bytes": after_forward, "peak_bytes": meter.peak_bytes}

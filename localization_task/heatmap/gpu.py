"""Training on GPUs: the device of each process, activation checkpointing, and activation memory.

- `process_device()`: the device a training process works on. Under a launcher
  (`accelerate launch`, `torchrun`) process r is on `cuda:LOCAL_RANK`, which is
  also where `transformers.Trainer` (through accelerate) puts its model; one
  plain process is on `cuda:0`; without CUDA, the CPU.
- `enable_activation_checkpointing(encoder)`: the encoder's layers keep only
  their inputs in the forward pass and recompute the rest in backward
  (non-reentrant `torch.utils.checkpoint`).
- `ActivationMeter`: bytes of the tensors a forward pass leaves alive for
  backward (and the peak through backward), counted on every operator call.
  With `fake=True` the pass runs on fake tensors (same operators, shapes and
  dtypes, no arithmetic), so a full-size encoder is measured on a CPU.
"""

from __future__ import annotations

import contextlib
import os
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK, set by the launchers); 0 without one."""
    value = os.environ.get("LOCAL_RANK", "0")
    if not value.isdigit():
        raise ValueError(f"LOCAL_RANK={value!r} is not a process index; unset it or launch with torchrun.")
    return int(value)


def process_device() -> torch.device:
    """`cuda:LOCAL_RANK` when CUDA is there (never plain "cuda", which is GPU 0 for every process), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank = local_rank()
    if rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                         "start at most one process per GPU.")
    return torch.device("cuda", rank)


def enable_activation_checkpointing(encoder) -> None:
    """Non-reentrant checkpointing of the encoder's layers (a transformers model).

    Non-reentrant, because the reentrant kind gives no gradient to a segment
    none of whose inputs requires one: with LoRA the patch embeddings are
    frozen, so the LoRA weights inside the layers would silently stop learning.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):  # newer name; the old one warns there
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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

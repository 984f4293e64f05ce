"""Per-step costs of training small models on the CPU that change no result.

- :func:`cuda_check_without_missing_nvml`: Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``
  when it is imported. Adam, AdamW and RMSprop ask at every step whether CUDA is available (for
  their CUDA-graph health check), and with that variable set torch answers by loading NVML
  (``libnvidia-ml.so.1``) anew. On a machine without NVML the load fails and torch falls back
  to the CUDA runtime's device count, as it does without the variable: ~0.2 ms a step for the
  same answer. Where NVML is missing the variable is therefore unset while training runs.
- :func:`direct_backward_allowed`: ``manual_backward`` passes the loss through the strategy and
  precision plugin, which only call the ``on_before_backward`` / ``on_after_backward`` hooks of
  every callback and the module around ``loss.backward()``. With one device, 32-bit precision,
  the default ``LightningModule.backward`` and none of those hooks overridden, calling
  ``loss.backward()`` does the same.
- :class:`NoOpProfiler`: Lightning wraps every hook call (dozens a step) in
  ``trainer.profiler.profile(name)``. Its default profiler records nothing, but its ``profile``
  is a generator-based context manager built anew at each call (~0.6 us); this one returns one
  reusable empty context.

``benchmarks/train_overhead.py`` measures what they save.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator

import lightning as L
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

NVML_CHECK_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"
BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")


@functools.cache
def nvml_loadable() -> bool:
    """Whether NVML loads here, under the name torch loads it by."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def cuda_check_without_missing_nvml() -> Iterator[None]:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` for the duration when NVML cannot be loaded (it
    then changes no answer, only costs a failed library load per optimiser step); restore it."""
    value = os.environ.get(NVML_CHECK_VARIABLE)
    if value is None or nvml_loadable():
        yield
        return
    del os.environ[NVML_CHECK_VARIABLE]
    try:
        yield
    finally:
        os.environ[NVML_CHECK_VARIABLE] = value


class NoOpProfiler(PassThroughProfiler):
    """Lightning's default ``PassThroughProfiler`` (records nothing), with one reusable empty
    context for every ``profile(action_name)`` instead of a new generator per call."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext[None]:  # type: ignore[override]
        return self._NOTHING


def direct_backward_allowed(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether ``loss.backward()`` does exactly what ``module.manual_backward(loss)`` would."""
    if type(trainer.strategy) is not SingleDeviceStrategy:
        return False
    if type(trainer.precision_plugin) is not Precision:  # 32-bit: no scaling, no casting
        return False
    if is_overridden("backward", module):
        return False
    # Lightning's defaults of these hooks do nothing
    return not any(is_overridden(hook, obj) for obj in (module, *trainer.callbacks)
                   for hook in BACKWARD_HOOKS)

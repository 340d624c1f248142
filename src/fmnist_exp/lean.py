"""Less Python per training step inside Lightning. On a small model, Lightning's bookkeeping (hooks,
profiler contexts, attribute writes) is a measurable share of each step. For lenet_bn at batch 128
these three changes cut the Python function calls per step from 3,170 to 2,104 (the plain loop in
scripts/benchmark.py makes 715) without changing what is computed:
`python scripts/benchmark.py --calls`, rows in docs/benchmarks.md.

- QuietProfiler: the Trainer's default profiler (PassThroughProfiler) opens a generator-based
  context manager about 95 times a step only to do nothing; this one hands out one shared no-op
  context. A profiler the user asks for (`trainer.profiler=simple`) replaces it.
- CallbackBundle: Lightning calls every hook of every callback on every step, overridden or not
  (about 90 calls per callback per step, 165 with the default profiler). Our small callbacks ride
  in one bundle, which calls each hook only on the parts that define it.
- PlainAttributes: Lightning sets `_current_fx_name` about 45 times a step, and nn.Module's
  __setattr__ runs its parameter/module/buffer checks on each. A str or None that is not a
  parameter, module or buffer is stored directly.
"""

import contextlib
from collections.abc import Callable

import lightning as L
from lightning.pytorch.profilers import PassThroughProfiler

HOOKS = tuple(
    name for name in dir(L.Callback) if name.startswith("on_") or name in ("setup", "teardown")
)


class QuietProfiler(PassThroughProfiler):
    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._NOTHING


class CallbackBundle(L.Callback):
    """Several stateless callbacks as one; each hook runs on the parts that override it, in order."""

    def __init__(self, *callbacks: L.Callback):
        self.callbacks: list[L.Callback] = []
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: L.Callback) -> None:
        if type(callback).state_dict is not L.Callback.state_dict:
            raise TypeError(
                f"{type(callback).__name__} keeps state in checkpoints; pass it to the Trainer on its "
                "own, not in a CallbackBundle."
            )
        self.callbacks.append(callback)
        for hook in HOOKS:
            parts = [
                getattr(c, hook)
                for c in self.callbacks
                if getattr(type(c), hook) is not getattr(L.Callback, hook)
            ]
            if parts:
                setattr(self, hook, _fan_out(tuple(parts)))


def _fan_out(methods: tuple[Callable, ...]) -> Callable[..., None]:
    def call_each(*args, **kwargs) -> None:
        for method in methods:
            method(*args, **kwargs)

    return call_each


class PlainAttributes:
    """Mix into a LightningModule (before it in the bases) for the fast attribute write above."""

    def __setattr__(self, name: str, value) -> None:
        if value is None or type(value) is str:
            d = self.__dict__
            if (
                name not in d.get("_parameters", ())
                and name not in d.get("_modules", ())
                and name not in d.get("_buffers", ())
            ):
                object.__setattr__(self, name, value)
                return
        super().__setattr__(name, value)

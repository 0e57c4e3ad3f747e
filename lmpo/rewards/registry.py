"""Reward functions by name, a user's own functions by import path, and their checked weighted sum.

A reward is a plain function ``reward(prompts, completions, **fields) -> list[float]`` (TRL's
convention): ``fields`` are per-example columns aligned with ``completions`` (from the dataset example
and the environment's ``info``), with None where an example lacks the field. It is called with
keywords, so ``def reward(completions, **kwargs)`` works too.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import itertools
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

RewardFn = Callable[..., list[float]]
F = TypeVar("F", bound=Callable[..., Any])

REWARDS: dict[str, RewardFn] = {}
_RESERVED = frozenset({"prompts", "completions"})  # passed by keyword, so no field or setting may take these names
_file_modules = itertools.count()


class RewardError(ValueError):
    """A reward could not be loaded or returned something unusable; the message is one line.

    ``user`` is True when the failing function is a user's own (``module:function`` or
    ``file.py:function``), so the CLI can report it as the user's mistake (exit code 2).
    """

    def __init__(self, message: str, user: bool = False) -> None:
        super().__init__(message)
        self.user = user


class NonFiniteReward(RewardError):
    """A reward function returned NaN or an infinity: a user's function's bug, or a run that diverged."""


def register_reward(name: str) -> Callable[[F], F]:
    """Register a reward function under ``name``, so configs can name it."""
    if ":" in name:
        raise ValueError(f"reward name {name!r} contains ':', which marks a user's module:function")

    def decorator(fn: F) -> F:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return decorator


def is_user_spec(spec: str) -> bool:
    """Whether ``spec`` names a user's own function (``module:function`` or ``file.py:function``)."""
    return ":" in spec


def load_reward(spec: str) -> RewardFn:
    """The reward function named by ``spec``: a registered name, ``package.module:function`` or ``file.py:function``."""
    if not is_user_spec(spec):
        if spec in REWARDS:
            return REWARDS[spec]
        close = difflib.get_close_matches(spec, REWARDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RewardError(
            f"unknown reward {spec!r}; {hint}registered: {', '.join(sorted(REWARDS))} "
            "(or give your own as package.module:function or path/to/file.py:function)"
        )
    where, _, attr = spec.rpartition(":")
    module = _import_file(spec, where) if where.endswith(".py") else _import_module(spec, where)
    if not hasattr(module, attr):
        raise RewardError(f"reward {spec!r}: {where} has no attribute {attr!r}", user=True)
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardError(f"reward {spec!r}: {where}:{attr} is a {type(fn).__name__}, not a function", user=True)
    return fn


def _import_module(spec: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise RewardError(f"reward {spec!r}: importing {name!r} raised {_describe(exc)}", user=True) from exc


def _import_file(spec: str, path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise RewardError(f"reward {spec!r}: no file {path!r} (looked in {file.resolve().parent})", user=True)
    name = f"_lmpo_user_reward_{next(_file_modules)}_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    assert module_spec is not None and module_spec.loader is not None  # a path ending in .py always has one
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickle look a module up here while it runs
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise RewardError(f"reward {spec!r}: importing {path} raised {_describe(exc)}", user=True) from exc
    return module


@dataclass
class RewardComponent:
    """One term of the weighted sum: a reward function, its weight and its keyword settings."""

    name: str
    weight: float
    fn: Callable[..., Any]
    settings: dict[str, Any]
    user: bool


class WeightedReward:
    """The weighted sum of several rewards, each one's output checked and its raw scores kept for logging."""

    def __init__(self, components: list[RewardComponent]) -> None:
        if not components:
            raise RewardError("no reward functions given")
        names = [c.name for c in components]
        for name in names:
            if names.count(name) > 1:
                raise RewardError(f"reward {name!r} is listed twice", user=is_user_spec(name))
        self.components = components

    @classmethod
    def from_specs(cls, specs: list[dict[str, Any]], sources: Mapping[str, str] | None = None) -> WeightedReward:
        """Build from config entries ``{"name": ..., "weight": 1.0, **settings}``; weight defaults to 1.0.
        ``sources`` loads a named function from elsewhere (a run's copy of a user's file), under its own name."""
        components = []
        for spec in specs:
            settings = dict(spec)
            name, weight = settings.pop("name", None), settings.pop("weight", 1.0)
            if not isinstance(name, str):
                raise RewardError(f"reward entry {spec!r} has no name")
            user = is_user_spec(name)
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise RewardError(f"reward {name!r}: weight must be a finite number, got {weight!r}", user=user)
            fn = load_reward((sources or {}).get(name, name))
            _check_settings(name, fn, settings, user)
            # a builtin's own checks (lmpo.rewards.library): an optional dependency that is not installed, or a
            # setting that cannot work, is a config error rather than a crash at the first batch
            for check in getattr(fn, "checks", ()):
                check(name, settings)
            components.append(RewardComponent(name, float(weight), fn, settings, user))
        return cls(components)

    @property
    def names(self) -> list[str]:
        """The components' names, in order (the keys of the raw scores)."""
        return [c.name for c in self.components]

    def __call__(
        self, prompts: list[str], completions: list[str], fields: Mapping[str, Sequence[Any]]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Weighted total per completion, and each component's raw (unweighted) scores by name."""
        n = len(completions)
        for key, column in [("prompts", prompts), *fields.items()]:
            if len(column) != n:
                raise RewardError(f"{key!r} has {len(column)} values for {n} completions")
        totals = [0.0] * n
        raw: dict[str, list[float]] = {}
        for c in self.components:
            raw[c.name] = scores = _score(c, prompts, completions, fields)
            totals = [t + c.weight * s for t, s in zip(totals, scores)]
        return totals, raw


def _check_settings(name: str, fn: Callable[..., Any], settings: dict[str, Any], user: bool) -> None:
    """Reject a setting the function does not take, so a typo (``max_word``) is not silently ignored."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some callables have no signature to inspect
        return
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - _RESERVED
    # A user's **kwargs may read any setting; a builtin's **kwargs only absorbs the other fields.
    open_ended = user and any(p.kind is p.VAR_KEYWORD for p in params)
    for key in settings:
        if key in _RESERVED or (key not in named and not open_ended):
            known = ", ".join(sorted(p.name for p in params if p.default is not p.empty)) or "none"
            raise RewardError(f"reward {name!r} has no setting {key!r} (its settings: {known})", user=user)


def _score(
    c: RewardComponent, prompts: list[str], completions: list[str], fields: Mapping[str, Sequence[Any]]
) -> list[float]:
    """Call one component and check it gave one finite number per completion."""
    clash = sorted(set(fields) & (set(c.settings) | _RESERVED))
    if clash:
        raise RewardError(f"reward {c.name!r}: setting or argument {clash[0]!r} is also a field of the batch", c.user)
    n = len(completions)
    try:
        out = c.fn(prompts=prompts, completions=completions, **fields, **c.settings)
    except Exception as exc:
        first = f"; first prompt {_short(prompts[0])}" if prompts else ""
        raise RewardError(
            f"reward {c.name!r} raised {_describe(exc)} (on a batch of {n} completions{first})", c.user
        ) from exc
    if isinstance(out, np.ndarray) and out.ndim == 1:
        out = out.tolist()
    if isinstance(out, str | bytes) or not isinstance(out, Sequence):
        raise RewardError(f"reward {c.name!r} returned {type(out).__name__}, expected a list of {n} numbers", c.user)
    if len(out) != n:
        raise RewardError(f"reward {c.name!r} returned {len(out)} scores for {n} completions", c.user)
    for i, value in enumerate(out):
        where = f"prompt {_short(prompts[i])} completion {_short(completions[i])}"
        if not isinstance(value, numbers.Real):
            raise RewardError(f"reward {c.name!r} returned {_short(value)} ({type(value).__name__}, not a number) "
                              f"for completion {i}: {where}", c.user)
        if not math.isfinite(value):
            raise NonFiniteReward(f"reward {c.name!r} returned {float(value)!r} for completion {i}: {where}", c.user)
    return [float(v) for v in out]


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters, keeping the closing quote; one line since repr escapes newlines."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "..." + text[-1]


def _describe(exc: BaseException) -> str:
    """``TypeName: message`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


from lmpo.rewards import builtin, library, model  # noqa: E402, F401  (register the built-ins; they import this module)

"""Model registry: variants register themselves by name; callers build them with create_model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ae_models.vocabulary import VARIANTS

if TYPE_CHECKING:
    from ae_models.variants.base import Autoencoder

_MODELS: dict[str, type[Autoencoder]] = {}
T = TypeVar("T", bound="type[Autoencoder]")


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator that makes an autoencoder variant available as ``create_model(name)``."""

    def wrap(cls: T) -> T:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_MODELS[name]!r}")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    """Import the built-in variants (each registers itself); once, on first need."""
    import importlib

    for name in VARIANTS:
        importlib.import_module(f"ae_models.variants.{name}")


def list_models() -> list[str]:
    """Names of all autoencoder variants, sorted: the built-in ones (known without importing
    PyTorch) and any registered since."""
    return sorted(set(VARIANTS) | set(_MODELS))


def get_model_class(name: str) -> type[Autoencoder]:
    """The class registered as ``name``; a ValueError lists the available names otherwise."""
    _load_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}") from None


def create_model(name: str, *, seed: int | None = None, **cfg: Any) -> Autoencoder:
    """Build the variant ``name`` from keyword config (validated by the variant's config class).

    With ``seed`` the initial weights depend on it alone, not on the global RNG state.
    """
    import torch

    cls = get_model_class(name)
    config = cls.config_class(**cfg)
    if seed is None:
        return cls(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)

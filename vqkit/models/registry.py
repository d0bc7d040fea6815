"""Model builders by name, so a model can be rebuilt from a plain dict.

A builder is a keyword-only function returning an ``nn.Module``. :func:`register` records it in
:data:`BUILDERS` and sets ``model.config = {"builder": name, "kwargs": {...}}`` on what it
returns, with *every* argument (defaults included, tuples as lists), so the dict survives
JSON/YAML and rebuilds the same model even if a default changes later::

    @register("vqvae_image")
    def vqvae_image(*, in_channels: int = 3, ...) -> VQVAE: ...

    model = vqvae_image(hidden=64)
    same = build_model(model.config)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from vqkit.weights import load_weights_into

BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so a config is plain JSON/YAML data."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a keyword-only builder to :data:`BUILDERS` under ``name``.

    The wrapped builder sets ``model.config`` to the dict that :func:`build_model` takes.
    When one registered builder calls another (``vqvae_image`` -> ``vqvae_nd``), the outer
    one runs last, so the config names the builder the user called.

    Every registered builder also takes torchvision's ``weights=None, progress=True``:
    ``weights`` (a bundle, a ``.safetensors`` file, a checkpoint directory, or a URL, with an
    optional ``#sha256=<hex>``) is loaded into the new model by
    :func:`vqkit.weights.load_weights_into`; neither is recorded in ``model.config``.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in BUILDERS:
            raise ValueError(f"a model builder named {name!r} is already registered")
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def builder(
            *args: Any, weights: Any = None, progress: bool = True, **kwargs: Any
        ) -> nn.Module:
            if args:
                raise TypeError(
                    f"{name}() takes keyword arguments only, got {len(args)} positional"
                )
            try:
                bound = signature.bind(**kwargs)
            except TypeError as err:
                raise ValueError(
                    f"bad arguments for model builder {name!r}: {err}; it accepts "
                    f"{list(signature.parameters)}"
                ) from None
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for key, value in bound.arguments.items():
                if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)  # a builder's own **kwargs, passed on flat
                else:
                    recorded[key] = value
            model = fn(**kwargs)
            model.config = {"builder": name, "kwargs": plain(recorded)}
            if weights is not None:
                load_weights_into(model, weights, progress=progress)
            return model

        BUILDERS[name] = builder
        return builder

    return decorator


def build_model(config: dict) -> nn.Module:
    """Rebuild a model from ``{"builder": name, "kwargs": {...}}`` (e.g. ``model.config``).

    Raises:
        ValueError: if the dict is malformed or names an unknown builder (the message lists
            the known ones).
    """
    if not isinstance(config, dict) or "builder" not in config:
        raise ValueError(
            f"a model config is a dict {{'builder': name, 'kwargs': {{...}}}}, got {config!r}"
        )
    name = config["builder"]
    if name not in BUILDERS:
        raise ValueError(f"unknown model builder {name!r}; known builders: {sorted(BUILDERS)}")
    kwargs = config.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"config['kwargs'] must be a dict, got {type(kwargs).__name__}")
    return BUILDERS[name](**kwargs)

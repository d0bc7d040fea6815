"""Configs as nested dataclasses: a YAML preset plus ``--set key=value`` overrides.

A config is a plain dataclass whose fields may themselves be dataclasses. Values are checked
against the annotated types, so a typo or a wrong type fails at load time with a message that
names the key, instead of deep inside a training run.

Example (config classes live at module level, so their annotations can be resolved)::

    @dataclass
    class Model:
        num_codes: int = 512
        strides: tuple[int, ...] = (2, 2)

    @dataclass
    class Recipe:
        model: Model = field(default_factory=Model)
        name: str = "run"

    cfg = load_config(Recipe, "preset.yaml", ["model.num_codes=256", "model.strides=[4,2]"])
    cfg.model  # Model(num_codes=256, strides=(4, 2))
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import types
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from vqkit.errors import InputError
from vqkit.io import atomic_write_bytes

T = TypeVar("T")

_NULL = {"null", "none", "~"}
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


class ConfigError(InputError):
    """A config key that does not exist, or a value of the wrong type."""


def load_config(
    cls: type[T],
    preset: Path | str | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build ``cls`` from a YAML preset (or dict), then apply ``key=value`` overrides.

    Args:
        cls: the config dataclass.
        preset: a YAML file (read with ``yaml.safe_load``), a dict, or None for the defaults.
        overrides: strings like ``"train.steps=100"``, ``"quantizer.kmeans_init=true"``,
            ``"vqvae.strides=[2,2]"``; dotted keys reach nested dataclasses, the value is read as
            YAML and converted to the field's annotated type (``null``/``none`` gives None for
            Optional fields; a ``str`` field takes the text as written).

    Raises:
        ConfigError: unknown key (with the keys that exist at that level), wrong type, or a
            required key left unset.
    """
    data = _read_preset(preset)
    for item in overrides:
        _apply_override(cls, data, item)
    return config_from_dict(cls, data)


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A config field with a range, checked wherever a config is read (a preset, ``--set``,
    a run's ``config.yaml``); None passes for Optional fields.

    Example:
        >>> @dataclasses.dataclass
        ... class Data:
        ...     sample_rate: int = ranged(8000, ge=1)
        >>> load_config(Data, overrides=["sample_rate=0"])  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ConfigError: config key 'sample_rate' must be >= 1, got 0 (--set sample_rate=...)
    """
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt})


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if ge is not None and not value >= ge:
        raise ConfigError(f"config key {key!r} must be >= {ge}, got {value} (--set {key}=...)")
    if gt is not None and not value > gt:
        raise ConfigError(f"config key {key!r} must be > {gt}, got {value} (--set {key}=...)")


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from a nested dict, checking keys and types."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"config class must be a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {cls.__name__} config must be a mapping, got {type(data).__name__}")
    return _from_dict(cls, data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a nested dict of YAML/JSON-friendly values (tuples become lists)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def save_config(cfg: Any, path: Path | str) -> None:
    """Write ``cfg`` as a YAML text file that :func:`load_config` reads back."""
    try:
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    except yaml.YAMLError as e:
        raise ConfigError(f"config holds a value YAML cannot store: {e}") from e
    # Atomic (temporary file, fsync, rename): a run killed while saving keeps its old config,
    # so `--resume` can always read it.
    atomic_write_bytes(Path(path), text.encode())


# --- sections derived from a builder's signature ----------------------------------------------


def builder_section(
    name: str,
    builder: Any,
    *,
    skip: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    nested: Mapping[str, type] | None = None,
    extra: Mapping[str, tuple[Any, Any]] | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> type:
    """A config dataclass whose fields are ``builder``'s keyword arguments, so the builder stays
    the one source of defaults (a preset states only what it changes).

    Args:
        name: the class name (shown in errors).
        builder: a function or class; its keyword parameters (annotations, defaults) become the
            fields, in order. A parameter without a default must be in ``skip``.
        skip: parameters the recipe sets from the data (``num_classes``, ``num_speakers``...).
        defaults: defaults that replace the signature's (e.g. a quantizer's preset defaults).
        nested: fields whose value is a section of its own (``{"quantizer": QuantizerSection}``).
        extra: the recipe's own keys beside the builder's: ``{name: (type, default)}``; they are
            never passed to the builder (see :func:`builder_kwargs`).
        namespace: methods of the class (``__post_init__`` checks; ``as_builder_arg()``, what
            :func:`builder_kwargs` passes for a nested section instead of all its fields).

    Example:
        >>> Section = builder_section("Prior", gated_pixelcnn, skip=("num_codes", "num_classes"))
        >>> Section().channels == inspect.signature(gated_pixelcnn).parameters["channels"].default
        True
    """
    fn = inspect.unwrap(builder.__init__ if isinstance(builder, type) else builder)
    hints = get_type_hints(fn)
    defaults, nested = dict(defaults or {}), dict(nested or {})
    fields: list[tuple[str, Any, dataclasses.Field]] = []
    for param in inspect.signature(fn).parameters.values():
        if param.name == "self" or param.name in skip:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in nested:
            section = nested[param.name]
            fields.append((param.name, section, dataclasses.field(default_factory=section)))
            continue
        default = defaults.pop(param.name, param.default)
        if default is inspect.Parameter.empty:
            raise TypeError(f"{name}: builder argument {param.name!r} has no default; skip it")
        fields.append((param.name, hints.get(param.name, Any), _field_with(default)))
    if defaults:
        raise TypeError(f"{name}: defaults for unknown arguments {sorted(defaults)}")
    for key, (tp, default) in (extra or {}).items():
        fields.append((key, tp, _field_with(default)))
    cls = dataclasses.make_dataclass(name, fields, namespace=dict(namespace or {}))
    cls.__builder_params__ = tuple(n for n, _, _ in fields if n not in (extra or {}))
    cls.__doc__ = f"The arguments of {getattr(builder, '__qualname__', builder)}" + (
        f", and the recipe's own {', '.join(extra)}." if extra else "."
    )
    return cls


def builder_kwargs(section: Any) -> dict[str, Any]:
    """The builder's keyword arguments held by a :func:`builder_section` instance (nested
    sections become plain dicts; the recipe's own keys are left out)."""
    out = {}
    for key in type(section).__builder_params__:
        value = getattr(section, key)
        out[key] = value.as_builder_arg() if hasattr(value, "as_builder_arg") else _plain(value)
    return out


def _field_with(default: Any) -> dataclasses.Field:
    if isinstance(default, dataclasses.Field):  # a ranged() default
        return default
    if isinstance(default, tuple):
        default = _plain(default)  # as a loaded config holds it (YAML has lists, not tuples)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default))
    return dataclasses.field(default=default)


# --- reading ---------------------------------------------------------------------------------


def _read_preset(preset: Path | str | Mapping[str, Any] | None) -> dict[str, Any]:
    if preset is None:
        return {}
    if isinstance(preset, Mapping):
        return copy.deepcopy(dict(preset))
    path = Path(preset)
    if not path.is_file():
        raise ConfigError(f"preset file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _apply_override(cls: type, data: dict[str, Any], item: str) -> None:
    """Write one ``a.b.c=value`` into ``data``, checking each key against the dataclasses."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=100)")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override key {key!r} is malformed (e.g. train.steps=100)")
    tp: Any = cls
    node = data
    prefix = ""
    for i, part in enumerate(parts):
        inner = _strip_optional(tp)
        if _is_dataclass_type(inner):
            ftypes = _field_types(inner)
            if part not in ftypes:
                raise _unknown_key(prefix, part, ftypes)
            child: Any = ftypes[part]
        elif _is_mapping_type(inner):
            args = get_args(inner)
            child = args[1] if len(args) == 2 else Any
        elif inner is Any:
            child = Any
        else:
            raise ConfigError(
                f"cannot set {key!r}: {prefix!r} is a {_type_name(tp)} value, not a section"
            )
        if i == len(parts) - 1:
            node[part] = _parse_override_value(raw, child)
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        tp, prefix = child, _join(prefix, part)


def _parse_override_value(raw: str, tp: Any) -> Any:
    text = raw.strip()
    if _takes_text(tp) and not (_is_optional(tp) and text.lower() in _NULL):
        return text  # a str field takes the text as written: name=2024 stays "2024"
    if text.lower() in _NULL:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# --- building --------------------------------------------------------------------------------


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    ftypes = _field_types(cls)
    for k in data:
        if k not in ftypes:
            raise _unknown_key(prefix, k, ftypes)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = _join(prefix, f.name)
        if f.name in data:
            value = data[f.name]
            base = _default_of(f)
            if isinstance(value, Mapping) and dataclasses.is_dataclass(base):
                # Partial nested section: keep the parent's default for the keys not given.
                value = _deep_merge(_plain(base), value)
            kwargs[f.name] = _coerce(value, ftypes[f.name], key)
            _check_range(f, kwargs[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {key!r} ({_type_name(ftypes[f.name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        field_name, _, rest = str(e).partition(" ")
        if field_name in ftypes:  # "steps must be >= 1, got 0": name the full key
            raise ConfigError(f"config key {_join(prefix, field_name)!r} {rest}") from e
        raise ConfigError(f"invalid config {prefix or cls.__name__!r}: {e}") from e


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to the annotated type ``tp``, or a ConfigError naming ``key``."""
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        if _is_optional(tp) and _is_null(value):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise _type_error(key, value, tp)
    if origin is Literal:
        for choice in get_args(tp):
            if value == choice and type(value) is type(choice):
                return choice
        choices = ", ".join(repr(c) for c in get_args(tp))
        raise ConfigError(f"config key {key!r} must be one of {choices}, got {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_dict(tp, value, key)
        raise _type_error(key, value, tp)
    if tp is bool:
        return _to_bool(value, key)
    if tp is int:
        return _to_int(value, key)
    if tp is float:
        return _to_float(value, key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(
            f"config key {key!r} expects str, got {value!r} ({type(value).__name__}); "
            f"quote it in YAML"
        )
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise _type_error(key, value, tp)
    if origin is tuple or tp is tuple:
        return _to_tuple(value, tp, key)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, tp)
        (elem,) = get_args(tp) or (Any,)
        return [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
    if _is_mapping_type(tp):
        if not isinstance(value, Mapping):
            raise _type_error(key, value, tp)
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _type_error(key, value, tp)
    return value  # an annotation we do not interpret (e.g. a Callable): pass through


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
    raise ConfigError(
        f"config key {key!r} expects bool (true/false/yes/no/1/0), got {value!r} "
        f"({type(value).__name__})"
    )


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise _type_error(key, value, int)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                value = float(value)  # "1e4": YAML 1.1 reads it as a string
            except ValueError:
                raise _type_error(key, value, int) from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _type_error(key, value, int)


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise _type_error(key, value, float)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _type_error(key, value, float)


def _to_tuple(value: Any, tp: Any, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, value, tp)
    args = get_args(tp)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(
            f"config key {key!r} expects {len(args)} values ({_type_name(tp)}), got {list(value)!r}"
        )
    return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


# --- helpers ---------------------------------------------------------------------------------


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields (works with ``from __future__ import annotations``)."""
    try:
        hints = get_type_hints(cls)
    except NameError as e:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__name__} ({e}); define config dataclasses "
            f"at module level so their annotations can be evaluated"
        ) from e
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_mapping_type(tp: Any) -> bool:
    return tp is dict or get_origin(tp) in (dict, Mapping)


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _takes_text(tp: Any) -> bool:
    inner = _strip_optional(tp)
    if inner is str or (isinstance(inner, type) and issubclass(inner, PurePath)):
        return True
    return get_origin(inner) is Literal and all(isinstance(c, str) for c in get_args(inner))


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NULL)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("pathlib.", "")


def _type_error(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(
        f"config key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def _unknown_key(prefix: str, key: Any, existing: Mapping[str, Any]) -> ConfigError:
    names = list(existing)
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {_join(prefix, close[0])!r}?)" if close else ""
    where = f"under {prefix!r}" if prefix else "at the top level"
    return ConfigError(
        f"unknown config key {_join(prefix, key)!r}{hint}; keys {where}: {', '.join(names)}"
    )

"""Typed configs: dataclasses with one help line per field, YAML recipes, dotted overrides.

Every stage has a small ``@dataclass`` config whose fields are declared with :func:`opt` (default +
one line of meaning). This module turns plain data (from YAML or the command line) into those
dataclasses and refuses, before any work starts, anything that is not valid:

- an unknown key fails with the nearest valid key (``pretrain.lr_max: unknown key; did you mean 'lr'?``),
- a value of the wrong type fails naming the key, the type wanted and the value given,
- an impossible value fails through the config's own ``validate()`` (e.g. ``n_embd`` not divisible by
  ``n_head``), with the key prefixed by where the config sits.

Overrides are dotted: ``key.sub=value`` or ``--key.sub value`` (the value is parsed as YAML, so
``3e-4``, ``true``, ``[a, b]`` work). :func:`describe` lists every option with type, default and help
for ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from lmforge.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "opt",
    "from_dict",
    "to_dict",
    "load_yaml",
    "parse_overrides",
    "merge",
    "describe",
    "hash_view",
    "fields_from",
]


def opt(default: Any, help: str, *, path: bool = False, cache: bool = True) -> Any:
    """Declare a config field with its default and one line of help.

    Args:
        default: the default value; lists, dicts and dataclass instances are copied per instance.
        help: one line saying what the field means (shown by ``--help``).
        path: True for fields that name where things are (input or output paths). Such fields are left
            out of the cache key, so moving a run directory does not invalidate it.
        cache: False for fields that change how work is done but never what it produces (worker
            counts, executors); they are left out of the cache key too.
    """
    meta = {"help": help, "path": path, "cache": cache}
    if isinstance(default, (list, dict, set)) or is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def retuned(cls: type, name: str, default: Any) -> Any:
    """The field ``name`` of the config dataclass ``cls`` with another default and everything else (help,
    path and cache rules) kept, for a subclass whose use needs a different default (pretraining's
    ``lr``, chat's longer replies)."""
    meta = cls.__dataclass_fields__[name].metadata
    return opt(default, meta["help"], path=meta["path"], cache=meta["cache"])


def at_least(cfg: Any, minimum: int, *names: str) -> None:
    """The range check of ``validate()`` methods: each field of ``names`` below ``minimum`` is a
    ``ConfigError(name, "must be >= minimum, got value")``, in the order given."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(name, f"must be >= {minimum}, got {value}")


def fields_from(cfg: Any, cls: type[T], **given: Any) -> T:
    """An instance of the dataclass ``cls`` whose fields take the values of ``cfg``'s fields of the same
    names, except those ``given`` (a config handing its options on to the settings object a library
    function takes, e.g. ``lmforge serve``'s limits to ``ServeSettings``).

    Raises:
        AttributeError: ``cfg`` has no field for one of ``cls``'s fields that is not ``given``.
    """
    taken = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name not in given}  # type: ignore[arg-type]
    return cls(**taken, **given)


def above(cfg: Any, minimum: float, *names: str) -> None:
    """The strict range check of ``validate()`` methods: each field of ``names`` not above ``minimum``
    (NaN included) is a ``ConfigError(name, "must be > minimum, got value")``, in the order given."""
    for name in names:
        value = getattr(cfg, name)
        if not value > minimum:
            raise ConfigError(name, f"must be > {minimum}, got {value}")


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


# --------------------------------------------------------------------------------------------------
# plain data → typed dataclass


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "") -> T:
    """Build ``cls`` from a mapping, coercing types and validating.

    Args:
        cls: a dataclass type whose fields were declared with :func:`opt` (or plain defaults).
        data: the mapping (from YAML or overrides). Missing keys take their defaults.
        prefix: dotted location of this config, used in error messages.

    Raises:
        ConfigError: unknown key (with the nearest valid key), wrong type, or an impossible value.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping of options, got {type(data).__name__} {data!r}")
    data = _renamed(cls, data, prefix)
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(_join(prefix, str(key)), _unknown_key_message(str(key), names))
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], _join(prefix, f.name))
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without default
        raise ConfigError(prefix, str(exc)) from None
    validate(obj, prefix=prefix)
    return obj


def _renamed(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with the deprecated option names of ``cls`` (its ``RENAMED`` mapping, old → new) given
    their current names, each use warned about once per config read; old and new together are refused."""
    renamed = getattr(cls, "RENAMED", {})
    if not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(
                _join(prefix, old), f"deprecated name of '{new}', which is also given: keep '{new}' only"
            )
        logging.getLogger(__name__).warning(
            "%s is deprecated and will be removed in the next release: use %s",
            _join(prefix, old),
            _join(prefix, new),
        )
        data[new] = data.pop(old)
    return data


def validate(obj: Any, *, prefix: str = "") -> None:
    """Run ``validate()`` on ``obj`` and on every nested dataclass, prefixing error keys."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            validate(value, prefix=_join(prefix, f.name))
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise exc.under(prefix) from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _unknown_key_message(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return f"unknown key; {hint}valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        k, v = get_args(tp) or (Any, Any)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    if is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``key``."""

    def bad(extra: str = "") -> ConfigError:
        return ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}{extra}")

    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                last = exc
        raise last or bad()
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}{hint}")
    if is_dataclass(tp):
        if is_dataclass(value):
            return value
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        (item_tp,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, str) and item_tp is str:
            value = [value]  # a single string where a list of strings is expected
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise bad()
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise bad() from None
            if f.is_integer():
                return int(f)
        raise bad()
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad()
        try:
            f = float(value)
        except ValueError:
            raise bad() from None
        if not math.isfinite(f):  # YAML's .nan / .inf, or "nan" / "inf" typed on the command line
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        return f
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad()


# --------------------------------------------------------------------------------------------------
# typed dataclass → plain data


def to_dict(obj: Any) -> dict[str, Any]:
    """The config as plain data (nested dataclasses become mappings), ready for YAML or JSON."""
    return dataclasses.asdict(obj)


def hash_view(obj: Any) -> dict[str, Any]:
    """The config as plain data without its path fields: what the cache key is computed from."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.metadata.get("path") or f.metadata.get("cache") is False:
            continue
        value = getattr(obj, f.name)
        out[f.name] = hash_view(value) if is_dataclass(value) else _copy(value)
    return out


# --------------------------------------------------------------------------------------------------
# YAML and overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a mapping; a missing or malformed file is a clear ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{p}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{p}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str], *, instances: bool = False) -> dict[str, Any]:
    """Turn ``["a.b=1", "--a.c", "x", "--flag"]`` into a nested mapping ``{"a": {"b": 1, "c": "x"}}``.

    Values are parsed as YAML (``3e-4`` and ``1e3`` are accepted as numbers by the typed coercion);
    ``--flag`` without a value means ``true``. Hyphens in option names read as underscores
    (``--max-steps``); with ``instances`` (``lmforge run``) the first part of a dotted key is a recipe's
    stage instance and is kept as written (``eval-lora.max_tokens=64``).
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            body = item[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            elif i + 1 < len(items) and not items[i + 1].startswith("--"):
                key, raw = body, items[i + 1]
                i += 1
            else:
                key, raw = body, "true"
        elif "=" in item:
            key, raw = item.split("=", 1)
        else:
            raise ConfigError("", f"cannot read override {item!r}: write key=value or --key value")
        if instances and "." in key:
            head, _, rest = key.partition(".")
            key = f"{head}.{rest.replace('-', '_')}"
        else:
            key = key.replace("-", "_")
        if not key:
            raise ConfigError("", f"empty key in override {item!r}")
        _set_dotted(out, key, _parse_value(raw))
        i += 1
    return out


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(key, f"'{part}' is set to a value and also used as a section")
        node = nxt
    node[parts[-1]] = value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# help


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every option of ``cls`` as ``(dotted key, type, default, help)``, nested configs flattened."""
    rows: list[tuple[str, str, str, str]] = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        key = _join(prefix, f.name)
        if is_dataclass(tp):
            rows.extend(describe(tp, key))
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), _show(default), f.metadata.get("help", "")))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

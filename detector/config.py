"""Configs are data: frozen dataclasses built from plain dicts (YAML), validated, and saved beside results.

Unknown keys are an error that names the key and the keys that would be right; values are checked
against the field's type and the constraints declared on it (``Annotated[int, Range(1)]``: the range of
every field is stated once, beside the field), so a typo or an out-of-range value in a YAML file or a
``--set`` fails before any work starts, naming the key and where the value came from. A rule across fields
(lr_min < lr_max) is the dataclass's ``validate()`` method, which ``check_fields`` calls after the fields'
own checks: one way to validate a section, whether it is read from YAML or built in code.

A section that has moved keys into a section of its own names them in ``MOVED_KEYS`` (``{"frontier_margin":
"frontier.margin"}``): the old spelling is still read, as the new key, so older files and saved run folders
load; an error about such a key names it as it was written.

A key added with a default that changes what a run does names, in the section's ``SAVED_DEFAULTS``
(``{"control": False}``), the value a config saved before it existed meant: ``fill_saved_defaults`` gives a
saved config (a run folder's ``experiment.yaml``) that value, so an old run resumes as it was started, while a
new config gets the dataclass's default.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range; the message names the key."""


# --- constraints declared on fields: `lr: Annotated[float, Range(0, 1, low_open=True)]` -----------------
@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a number must lie in (``None``: unbounded on that side); ``why`` says where a bound
    comes from when it is not obvious."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def reason(self, value: Any) -> str | None:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if low_ok and high_ok:
            return None
        left = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        right = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{value!r} is not in {left}, {right}" + (f" ({self.why})" if self.why else "")


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a set of names known at run time (architectures, metrics): a Literal that is not spelled twice."""

    choices: tuple[str, ...]

    def reason(self, value: Any) -> str | None:
        return None if value in self.choices else f"{value!r} is not one of {', '.join(self.choices)}"


@dataclasses.dataclass(frozen=True)
class Match:
    """A string that matches ``pattern`` as a whole; ``what`` describes it for the error."""

    pattern: str
    what: str

    def reason(self, value: Any) -> str | None:
        return None if re.fullmatch(self.pattern, value) else f"{value!r} is not {self.what}"


@dataclasses.dataclass(frozen=True)
class Items:
    """A list with at least ``at_least`` values, each given once when ``unique``."""

    at_least: int = 0
    unique: bool = False

    def reason(self, value: Any) -> str | None:
        values = list(value)
        if len(values) < self.at_least:
            return f"needs at least {self.at_least} value{'s' if self.at_least > 1 else ''}, got {values}"
        if self.unique and len(set(values)) != len(values):
            return f"duplicates in {values}; give each value once"
        return None


# Seeds: NumPy takes seeds below 2**32; searchers add small offsets (one per sparsity) to a seed.
Seed = Annotated[int, Range(0, 2**31 - 1, why="NumPy seeds, with room for per-study offsets")]
AtLeastOne = Annotated[int, Range(1)]
NonNegative = Annotated[int, Range(0)]
NonEmpty = Annotated[str, Match(r"\S.*", "a non-empty string")]


def _check_value(where: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        value = _check_value(where, value, args[0])
        for constraint in args[1:]:
            reason = constraint.reason(value)
            if reason is not None:
                raise ConfigError(f"{where}: {reason}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message says what is wrong
            return _check_value(where, value, options[0])
        for arg in options:
            try:
                return _check_value(where, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_check_value(f"{where}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _check_value(f"{where}.{k}", v, vt) for k, v in value.items()}
    if tp is float:
        # YAML reads 1e-4 as a string unless written 1.0e-4; accept both spellings.
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):  # .inf / .nan: no setting of this job means infinity
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(number)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def check_fields(obj: Any, *, where: str = "") -> None:
    """Check every field of the dataclass instance ``obj`` against its type and declared constraints, then
    the rules across its fields: ``obj.validate()``, where the class has one. Call it from ``__post_init__``,
    so that a config built in code is held to the same rules as one read from YAML. Raises ConfigError
    naming the field (after ``where``, the section's key, when given).

    ``validate()`` raises ConfigError naming its keys: in full (``search.lr_min/lr_max: ...``), or relative
    to a section that may stand in several places (``rewind_epoch: ...``), which ``from_dict`` then prefixes
    with the section's key."""
    hints = _hints(type(obj))
    prefix = f"{where}." if where else ""
    for f in dataclasses.fields(obj):
        _check_value(prefix + f.name, getattr(obj, f.name), hints[f.name])
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()


def _section_type(cls: type, name: str) -> type | None:
    """The dataclass that field ``name`` of ``cls`` holds (a section inside the section), else None."""
    tp = _hints(cls).get(name) if name in {f.name for f in dataclasses.fields(cls)} else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _moved_keys(cls: type) -> Mapping[str, str]:
    return getattr(cls, "MOVED_KEYS", {})


def fill_saved_defaults(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data``, a config saved by an earlier version (a run folder's), with every key that a section's
    ``SAVED_DEFAULTS`` names (in its current spelling) and ``data`` lacks set to the value it meant then, here
    and in the sections inside. Read a saved config through this, never a new one: for a new config the
    dataclass's default holds.

    A section the saved config leaves out is filled too: it held its defaults, the saved ones among them.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Search:
    ...     control: bool = True
    ...     SAVED_DEFAULTS = {"control": False}  # a class attribute, not a field
    >>> fill_saved_defaults(Search, {}), fill_saved_defaults(Search, {"control": True})
    ({'control': False}, {'control': True})
    """
    out = {**dict(getattr(cls, "SAVED_DEFAULTS", {})), **data}
    for f in dataclasses.fields(cls):
        inner_cls = _section_type(cls, f.name)
        value = out.get(f.name, {})  # a section the file leaves out holds its defaults: the saved ones too
        if inner_cls is not None and isinstance(value, Mapping):
            inner = fill_saved_defaults(inner_cls, value)
            if inner or f.name in out:
                out[f.name] = inner
    return out


def _respell(cls: type, data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with every key in an old spelling (a section's ``MOVED_KEYS``, here and in the sections
    inside) moved to where it is now; and {key now: key as written}, to name it in errors as written."""
    out = dict(data)
    prefix = f"{where}." if where else ""
    written: dict[str, str] = {}
    for old, new in _moved_keys(cls).items():
        if old not in out:
            continue
        section, _, key = new.partition(".")
        inner = out.get(section, {})
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{prefix}{section}: expected a mapping, got {inner!r}")
        if key in inner:
            raise ConfigError(f"{prefix}{old} and {prefix}{new} are one key, in its old and its new spelling; "
                              f"give it once, as {prefix}{new}")
        out[section] = {**inner, key: out.pop(old)}
        written[prefix + new] = prefix + old
    for name, value in out.items():
        inner_cls = _section_type(cls, name)
        if inner_cls is not None and isinstance(value, Mapping):
            out[name], inner_written = _respell(inner_cls, value, prefix + name)
            written.update(inner_written)
    return out, written


def _as_written(message: str, written: Mapping[str, str]) -> str:
    for now, old in written.items():
        message = re.sub(rf"(?<![\w.]){re.escape(now)}(?!\w)", old, message)
    return message


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys, wrong types and values out of their
    declared range raise ConfigError naming the key. A key in the old spelling a section's ``MOVED_KEYS``
    names is read as the key it is now, and named as written in an error.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 1e-4
    >>> from_dict(Opt, {"lr": "1e-3"})
    Opt(lr=0.001)
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    data, written = _respell(cls, data, where)
    try:
        return _build(cls, data, where)
    except ConfigError as e:
        if not written:
            raise
        raise ConfigError(_as_written(str(e), written)) from None


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _check_value(key, value, hints[name])
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing key(s): {', '.join(prefix + m for m in missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # validate(): its keys named in full, or within this section
        message = str(e)
        if not where or message.startswith(where):
            raise
        raise ConfigError(f"{where}: {message}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from e


def from_dict_with_overrides(cls: type[T], data: Mapping[str, Any], overrides: Sequence[str], *,
                             source: str) -> T:
    """``from_dict(cls, data)`` after the ``--set`` ``overrides``; an error says where the bad value came
    from: ``source`` (the config file) or the ``--set KEY=VALUE`` that brought it in.

    The culprit is found by building again from the file alone, then after each override in turn: the
    first of those that fails with the same error is where it came from (so a check across fields, such
    as lr_min < lr_max, blames the override that broke it, and an override may repair a file).

    A ``--set`` replaces its key in whichever spelling the file has it (``MOVED_KEYS``); two ``--set`` of
    one key in its two spellings are an error naming both.
    """
    _check_spellings(cls, overrides)
    final = copy.deepcopy(dict(data))
    for item in overrides:  # an ill-formed --set is its own error
        _override(cls, final, item)
    try:
        return from_dict(cls, final)
    except ConfigError as e:
        message = str(e)
    partial = copy.deepcopy(dict(data))
    for n in range(len(overrides) + 1):
        if n:
            _override(cls, partial, overrides[n - 1])
        try:
            from_dict(cls, partial)
        except ConfigError as e:
            if str(e) == message:
                origin = source if n == 0 else f"--set {overrides[n - 1]}"
                raise ConfigError(f"{origin}: {message}") from None
    raise ConfigError(f"{source} with --set {' '.join(overrides)}: {message}")


def _other_spellings(cls: type, parts: Sequence[str]) -> list[list[str]]:
    """The other paths that name the key ``parts`` names in ``cls``: its old or its new spelling."""
    key = ".".join(parts)
    moved = _moved_keys(cls)
    out = [new.split(".") for old, new in moved.items() if old == key]
    out += [[old] for old, new in moved.items() if new == key]
    inner_cls = _section_type(cls, parts[0]) if len(parts) > 1 else None
    if inner_cls is not None:
        out += [[parts[0], *p] for p in _other_spellings(inner_cls, parts[1:])]
    return out


def _check_spellings(cls: type, overrides: Sequence[str]) -> None:
    given: dict[str, str] = {}
    for item in overrides:
        key = item.partition("=")[0]
        for other in _other_spellings(cls, key.split(".")):
            if ".".join(other) in given:
                raise ConfigError(f"--set {given['.'.join(other)]} and --set {item}: one key, in its old and its "
                                  f"new spelling; give it once")
        given[key] = item


def _override(cls: type, data: dict[str, Any], item: str) -> None:
    """``apply_override``, after removing the key's other spelling from ``data``: the --set replaces it."""
    for path in _other_spellings(cls, item.partition("=")[0].split(".")):
        node: Any = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    apply_override(data, item)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config as plain data (lists, not tuples), ready for JSON, YAML, checkpoints and Tune."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:  # its own message spans lines; an error is one line here
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """``search.trials_per_sparsity=2`` -> ``data["search"]["trials_per_sparsity"] = 2`` (value parsed as YAML),
    in place; what ``--set`` does for every command that takes a config."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. search.trials_per_sparsity=2")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from None


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a config (dataclass or dict) atomically as YAML."""
    from detector.io import atomic_write_text

    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))

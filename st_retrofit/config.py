"""What every configuration section shares: one error type, the pydantic base class, YAML reading.

Each stage package owns its section (``st_retrofit.synth.config``, ``st_retrofit.mining.config``...) as a
:class:`ConfigModel`; :mod:`st_retrofit.recipe` only composes them. pydantic maps YAML onto the typed sections and
gives the JSON Schema; :func:`validate_section` turns pydantic's errors into one line naming the key path:

    mining.relative_margn: unknown key (did you mean relative_margin?)
    mining.relative_margin: expected a number in [0, 1), got 1.5

This module imports neither torch nor any stage, so that a recipe is checked before anything heavy loads.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import types
import typing
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator


class StRetrofitError(Exception):
    """The root of every error a user can fix (a setting, a file, a busy run folder, a failed stage): its message
    says what is wrong and how to fix it, ``key`` names the setting or file at fault (``""`` when none does). The
    command line prints one as a single ``error:`` line; anything else is a bug and keeps its traceback."""

    key: str = ""


class ConfigError(StRetrofitError, ValueError):
    """A configuration problem, reported as ``<key path>: <what is wrong and how to fix it>``.

    Raised with the key relative to the section that found it; :meth:`under` prefixes the path of the enclosing
    section, so that the same error reads ``r: ...`` inside :class:`~st_retrofit.models.config.LoraSettings` and
    ``model.lora.r: ...`` from the recipe.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` in front of its key (``[0]`` and ``.name`` joined as written)."""
        if not prefix:
            return self
        if not self.key:
            return ConfigError(prefix, self.message)
        return ConfigError(f"{prefix}{self.key}" if self.key.startswith("[") else f"{prefix}.{self.key}", self.message)


@contextmanager
def keyed(prefix: str) -> Iterator[None]:
    """A :class:`ConfigError` raised inside names its key under ``prefix``: within ``with keyed("mining"):`` an error
    about ``teacher`` reads ``mining.teacher: ...``."""
    try:
        yield
    except ConfigError as exc:
        raise exc.under(prefix) from None


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


def did_you_mean(name: str, known: Iterable[str], listing: str = "valid keys") -> str:
    """`` (did you mean X?)`` for a close match, else ``; <listing>: a, b, c``."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    return f" (did you mean {close[0]}?)" if close else f"; {listing}: {', '.join(known)}"


# The largest count a setting may hold (rows, texts, candidates, negatives, a batch, steps): past it the number is a
# typo, refused when the recipe is read, not after the stages before the one that uses it have run.
MAX_COUNT = 2**31 - 1


class ConfigModel(BaseModel):
    """Base of every recipe section: unknown keys are errors, types are strict (``"5%"`` is not a number, ``true``
    not an integer; an integer is a number), and defaults are validated too.

    ``renamed`` maps a key of an earlier release to its new name: the old key still loads, with a warning that
    names the new one, for one release.
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    renamed: ClassVar[dict[str, str]] = {}
    # Integer settings that are no counts, exempt from MAX_COUNT.
    not_counts: ClassVar[frozenset[str]] = frozenset({"seed"})

    def __init__(self, **data: Any) -> None:
        # Built from Python (MiningConfig(num_negatives=0)), a section fails the way a recipe does: one ConfigError.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(type(self), exc.errors()) from None

    @model_validator(mode="before")
    @classmethod
    def _rename_deprecated_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed:
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old in data:
                warnings.warn(
                    f"{cls.__name__}: '{old}' is now '{new}'; the old key will stop loading in the next release",
                    FutureWarning,
                    stacklevel=2,
                )
                if new in data:
                    raise ConfigError(old, f"is the old name of {new}; set only {new}")
                data[new] = data.pop(old)
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _count_within_reach(cls, value: Any, info: ValidationInfo) -> Any:
        if type(value) is int and value > MAX_COUNT and info.field_name not in cls.not_counts:
            raise ConfigError("", f"expected at most {MAX_COUNT} (2^31 - 1; more than any run holds), got {value}")
        return value

    def check_environment(self) -> None:
        """Checks that need the file system, a model resolver or a library's own argument class (missing files,
        unknown models, a trainer argument out of range); run by the recipe after the shape checks, before any
        heavy work. Raise :class:`ConfigError` with a key relative to this section."""

    def local_inputs(self) -> list[str]:
        """Local files and folders the section names (a corpus, models given as folders); the stages that read the
        section count their contents in their fingerprints."""
        return []

    # Bump when a default changes what the stages reading the section compute, so that finished runs that relied on
    # the old default run again; tests/test_fingerprints.py holds every default and fails until it is bumped.
    defaults_version: ClassVar[int] = 1

    def fingerprint_payload(self) -> dict[str, Any]:
        """What the section contributes to the fingerprints of the stages that read it: the values that differ from
        their defaults, and the section's ``defaults_version``. A release that adds a field (at a default that keeps
        the old behaviour) leaves finished runs up to date; one that changes a default bumps the version."""
        return {"set": self.model_dump(mode="json", exclude_defaults=True), "defaults_version": self.defaults_version}


def validate_section(cls: type[ConfigModel], data: Any, prefix: str = "") -> Any:
    """``cls`` built from ``data``, with pydantic's first error as one :class:`ConfigError` under ``prefix``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _config_error(cls, exc.errors()).under(prefix) from None


def load_yaml(text: str, origin: str) -> Any:
    """YAML with repeated keys refused (PyYAML keeps the last one silently)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError("", f"{origin} is not valid YAML: {detail}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML reads YAML 1.1, where a float needs a dot and a signed exponent: ``2e-5`` and ``1.0e5`` are strings there
# (a learning rate "expected a number"). YAML 1.2, and every other parser, reads them as floats; so do recipes.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def resolve_local_paths(cls: type[BaseModel], data: Any, base: Path) -> Any:
    """``data`` (a recipe mapping) with the relative paths of fields marked ``local_path`` that exist beside the
    recipe file (under ``base``) rewritten to reach them from the working directory; anything else (a Hub id, an
    ``offline:`` name, a path relative to the working directory) stays as written."""
    if not isinstance(data, dict):
        return data

    def resolve(value: Any, key: str) -> Any:
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            candidate = base / value
            if candidate.exists():
                return os.path.relpath(candidate)
            if Path(value).exists() and Path(value).resolve() != candidate.resolve():
                # One rule: a recipe's inputs are read from its folder. Reading this one from the working folder
                # would make the run depend on where it was started.
                raise ConfigError(
                    key,
                    f"{value} is not beside the recipe (no {candidate}) but is in the folder you run in; a recipe's "
                    f"paths are relative to its own folder: write {os.path.relpath(Path(value).resolve(), base)}",
                )
        return value

    out = dict(data)
    for key, value in data.items():
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("local_path"):
            if isinstance(value, list):
                out[key] = [resolve(v, f"{key}[{i}]") for i, v in enumerate(value)]
            elif isinstance(value, dict):
                out[key] = {k: resolve(v, f"{key}.{k}") for k, v in value.items()}
            else:
                out[key] = resolve(value, key)
            continue
        inner, _ = _strip_optional(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            with keyed(key):
                out[key] = resolve_local_paths(inner, value, base)
        elif typing.get_origin(inner) is list and isinstance(value, list):
            (item,) = typing.get_args(inner)
            if isinstance(item, type) and issubclass(item, BaseModel):
                out[key] = []
                for i, v in enumerate(value):
                    with keyed(f"{key}[{i}]"):
                        out[key].append(resolve_local_paths(item, v, base))
    return out


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return options[0], True
    return tp, False


def check_writable(folder: str | Path, key: str) -> None:
    """``folder`` (or, before it exists, the nearest folder above it) can be written to."""
    path = Path(folder).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise ConfigError(key, f"{folder} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot write to {folder} ({existing} is not writable); choose another folder")


# ----------------------------------------------------------------------------------------------------------------
# pydantic errors as one line naming the key


def describe_type(tp: Any) -> str:
    """``an integer``, ``a number or null``, ``'top' or 'random'``: a type as an error message names it."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return describe_type(typing.get_args(tp)[0])
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is list or (origin is tuple and typing.get_args(tp)[-1:] == (Ellipsis,)):
        return f"a list of {_plural(typing.get_args(tp)[0])}"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " or ".join(repr(member.value) for member in tp)
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(tp, describe_type(tp))


def _resolve(cls: type[BaseModel], loc: tuple) -> tuple[str, Any, Any]:
    """Walk pydantic's location through the model's annotations: the key path as a user writes it, the type
    expected there and the field's info (for range constraints). Union branch tags in ``loc`` are skipped."""
    path, tp, info = "", cls, None
    for part in loc:
        while True:
            origin = typing.get_origin(tp)
            if origin is typing.Annotated:
                tp = typing.get_args(tp)[0]
                continue
            if origin in (typing.Union, types.UnionType):
                options = [a for a in typing.get_args(tp) if a is not type(None)]
                branch = _union_branch(options, part)
                if branch is not None:
                    tp, part = branch, None
                    break
                if len(options) == 1:
                    tp = options[0]
                    continue
            break
        if part is None:
            continue
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            path = f"{path}.{part}" if path else str(part)
            tp, info = (field.annotation, field) if field is not None else (None, None)
        elif origin is list and isinstance(part, int):
            path, tp, info = f"{path}[{part}]", typing.get_args(tp)[0], None
        elif origin is dict:
            path, tp, info = f"{path}.{part}" if path else str(part), typing.get_args(tp)[1], None
        else:
            path = f"{path}.{part}" if path else str(part)
            tp, info = None, None
    return path, tp, info


def _union_branch(options: list, part: Any) -> Any:
    """The union member a location segment names: a discriminator tag (``openai``) or a type name (``str``)."""
    for option in options:
        tag = _tag(option)
        if tag is not None and part == tag:
            return option
        name = getattr(option, "__name__", None)
        if part in (name, str(option).replace("typing.", "")):
            return option
    return None


def _tag(option: Any) -> Any:
    if isinstance(option, type) and issubclass(option, BaseModel) and "type" in option.model_fields:
        args = typing.get_args(option.model_fields["type"].annotation)
        return args[0] if len(args) == 1 else None
    return None


def _range(info: Any) -> str | None:
    low = high = None
    for constraint in getattr(info, "metadata", ()):
        for name in ("ge", "gt"):
            if getattr(constraint, name, None) is not None:
                low = (getattr(constraint, name), name == "ge")
        for name in ("le", "lt"):
            if getattr(constraint, name, None) is not None:
                high = (getattr(constraint, name), name == "le")
    if low and high:
        return f"in {'[' if low[1] else '('}{low[0]}, {high[0]}{']' if high[1] else ')'}"
    if low:
        return f"{'>=' if low[1] else '>'} {low[0]}"
    if high:
        return f"{'<=' if high[1] else '<'} {high[0]}"
    return None


def _config_error(cls: type[BaseModel], errors: list[dict]) -> ConfigError:
    # A misspelled key also makes the key it was meant to be "missing": name the misspelling.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key, tp, info = _resolve(cls, tuple(first["loc"]))
    kind, value = first["type"], first.get("input")
    ctx = first.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and isinstance(ctx.get("error"), ConfigError):
        return ctx["error"].under(key)
    if kind == "extra_forbidden":
        parent_key, parent, _ = _resolve(cls, tuple(first["loc"])[:-1])
        names = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        return ConfigError(key, f"unknown key{did_you_mean(str(first['loc'][-1]), names)}")
    if kind == "missing":
        return ConfigError(key, "required")
    if kind == "union_tag_invalid":
        return ConfigError(
            f"{key}.type" if key else "type", f"expected {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
        )
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _range(info) or first["msg"].lower().removeprefix("input should be ")
        if bounds.startswith("in "):  # an interval reads "a number in [0, 1)"; a bound alone reads ">= 1"
            bounds = f"{'an integer' if tp is int else 'a number'} {bounds}"
        return ConfigError(key, f"expected {bounds}, got {value!r}")
    if kind in ("value_error", "assertion_error"):
        return ConfigError(key, first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "))
    # A type error: several for a union (one per member) all mean "none of these".
    same = [e for e in errors if _resolve(cls, tuple(e["loc"]))[0] == key]
    expected = describe_type(tp) if tp is not None else first["msg"]
    if len(same) > 1 and tp is not None:
        _, outer, _ = _resolve(cls, tuple(first["loc"])[:-1])
        expected = describe_type(outer) if outer is not None else expected
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        expected = "a mapping" + (
            f" of {', '.join(tp.model_fields)}" if isinstance(tp, type) and issubclass(tp, BaseModel) else ""
        )
    return ConfigError(key, f"expected {expected}, got {value!r}")


class UndeclaredSectionError(RuntimeError):
    """A stage read a recipe section it does not declare: a bug in the stage, since its fingerprint would miss it."""


class SectionView:
    """What a stage may read of a recipe: the sections it declares, and ``seed``, ``name`` and ``run_dir``.

    The pipeline hands each stage one of these instead of the recipe, so a stage cannot depend on a value that its
    fingerprint does not cover; reading any other section raises :class:`UndeclaredSectionError`.
    """

    ALWAYS = ("seed", "name", "output_dir", "run_dir")

    def __init__(self, recipe: Any, stage: str, sections: Iterable[str]) -> None:
        self._recipe, self._stage, self._sections = recipe, stage, tuple(sections)

    def to_dict(self) -> dict[str, Any]:
        """The run's identity and the declared sections, as a recipe mapping (all of it for a stage that declares
        every section, as publish does)."""
        head = {key: getattr(self._recipe, key) for key in ("name", "seed", "output_dir")}
        return head | {section: getattr(self._recipe, section).model_dump(mode="json") for section in self._sections}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._sections or name in self.ALWAYS:
            return getattr(self._recipe, name)
        raise UndeclaredSectionError(
            f"the {self._stage} stage read recipe.{name}, which it does not declare (it declares "
            f"{', '.join(self._sections)}); add it to the stage's sections so that its fingerprint covers it"
        )


_PART = re.compile(r"^([A-Za-z_][\w-]*)((?:\[\d+\])*)$")


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``key.path=value`` to a recipe mapping; the value is read as YAML (``[en, de]``, ``null``, ``5``).

    A part may index a list: ``train.losses[0].weight=0.5`` sets a key of the first entry, and an index one past
    the end appends (``train.losses[1]={loss: EmbedDistillLoss}``).
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError("--set", f"expected key.path=value, got {assignment!r}")
    try:
        value = load_yaml(raw, f"the value {raw!r} of {key}")
    except ConfigError as exc:
        raise ConfigError("--set", exc.message) from None
    steps: list[str | int] = []
    for part in key.split("."):
        match = _PART.match(part)
        if match is None:
            raise ConfigError("--set", f"{key}: {part!r} is not a key name (with [index]es after it)")
        steps.append(match.group(1))
        steps.extend(int(i) for i in re.findall(r"\d+", match.group(2)))
    node: Any = data
    for depth, step in enumerate(steps):
        last = depth == len(steps) - 1
        where = _path_text(steps[:depth]) or "the recipe"
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(key, f"{where} is not a list; [{step}] indexes a list")
            if step > len(node) or (step == len(node) and not last):
                raise ConfigError(key, f"{where} has {len(node)} entries; index {step} is past its end")
            if step == len(node):
                node.append(value)
                return
        elif not isinstance(node, dict):
            raise ConfigError(key, f"cannot set a key inside {where}, which is not a mapping")
        if last:
            node[step] = value
            return
        if isinstance(step, str) and step not in node:
            node[step] = [] if isinstance(steps[depth + 1], int) else {}
        node = node[step]


def _path_text(steps: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else (f".{s}" if i else s) for i, s in enumerate(steps))

"""Named kinds that own their behaviour: one registry per idea (a search backend, a merge method, a mining output
layout), each kind a class registered under its name.

A kind carries what used to be spread over string comparisons: its description (for ``--help``, the JSON Schema
and the card), the modules it needs (checked when the recipe is read, with the extra that brings them) and its
behaviour (build a searcher, merge tensors, lay out rows). A recipe field that names a kind is typed with
:meth:`Registry.field`: a string checked against the registry when the recipe is read, so a kind registered from
a user's own package (``@SEARCH_BACKENDS.register`` before ``load_recipe``) is a valid value without editing ours,
and the JSON Schema lists the names registered when it is generated.

This module sits beside :mod:`st_retrofit.config` at the bottom of the layering: it imports nothing heavier.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator

from st_retrofit.config import ConfigError, did_you_mean


class Kind:
    """Base of a registered kind. Subclasses set ``name`` and ``description``, and ``modules`` when they import
    something outside the core install (the extra that brings each is found by :func:`~st_retrofit.extras.require_module`)."""

    name: ClassVar[str]
    description: ClassVar[str]
    modules: ClassVar[tuple[str, ...]] = ()

    def installed(self) -> bool:
        """Whether every module of :attr:`modules` can be imported (what :meth:`check_environment` would raise on)."""
        from st_retrofit.extras import has_module

        return all(has_module(module) for module in self.modules)

    def check_environment(self) -> None:
        """Raise :class:`~st_retrofit.extras.MissingExtraError` (a :class:`ConfigError`) when a module is missing."""
        from st_retrofit.extras import require_module

        for module in self.modules:
            require_module(module, self.name)


class KindFamily(Kind):
    """A kind that stands for many, named ``<family>:<variant>`` (``mergekit:model_stock``): another library's own
    registry reached through ours. :meth:`variant` returns the kind for one name; it must not import that library
    (the recipe's shape check calls it), :meth:`Kind.check_environment` of the variant does."""

    def variant(self, name: str) -> Kind:
        raise NotImplementedError


K = TypeVar("K", bound=Kind)


class Registry(Generic[K]):
    """The kinds of one idea, by name, in registration order.

    Args:
        what: what a kind is, for error messages (``"search backend"``).
        base: the class every kind derives from.

    Example::

        @SEARCH_BACKENDS.register
        class MySearch(SearchBackend):
            name, description = "mine", "my index"
            ...
    """

    def __init__(self, what: str, base: type[K]) -> None:
        self.what, self.base = what, base
        self._kinds: dict[str, K] = {}

    def register(self, cls: type[K]) -> type[K]:
        """Class decorator: register one instance of ``cls`` under ``cls.name`` (a second class of the same name
        replaces the first, so a user's package can override a kind deliberately)."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"a {self.what} must subclass {self.base.__name__}, got {cls!r}")
        if not getattr(cls, "name", None) or not getattr(cls, "description", None):
            raise TypeError(f"{cls.__name__}: a {self.what} needs a name and a description")
        self._kinds[cls.name] = cls()
        return cls

    def __getitem__(self, name: str) -> K:
        kind = self._kinds.get(name)
        if kind is not None:
            return kind
        family, colon, variant = str(name).partition(":")
        if colon and variant and isinstance(self._kinds.get(family), KindFamily):
            return self._kinds[family].variant(variant)
        listing = [f"{n}:<name>" if isinstance(k, KindFamily) else n for n, k in self._kinds.items()]
        raise ConfigError("", f"unknown {self.what} {name!r}{did_you_mean(name, listing, 'registered')}")

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def names(self) -> list[str]:
        return list(self._kinds)

    def items(self) -> list[tuple[str, K]]:
        return list(self._kinds.items())

    def check(self, name: str) -> str:
        """``name`` if it is registered, else a :class:`ConfigError` with the close match or the list."""
        self[name]
        return name

    def field(self) -> Any:
        """The pydantic type of a field holding one of these names (checked on load, listed in the JSON Schema)."""
        return Annotated[str, AfterValidator(self.check), _RegisteredNames(self)]


class _RegisteredNames:
    """JSON Schema hook: the names registered when the schema is generated, as an ``enum`` with descriptions."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        kinds = [(name, kind) for name, kind in self.registry.items() if not isinstance(kind, KindFamily)]
        families = [name for name, kind in self.registry.items() if isinstance(kind, KindFamily)]
        named = {
            "enum": [name for name, _ in kinds],
            "markdownEnumDescriptions": [kind.description for _, kind in kinds],
        }
        if not families:
            return schema | named
        pattern = {"pattern": f"^({'|'.join(families)}):.+$"}
        return schema | {"anyOf": [named, pattern]}

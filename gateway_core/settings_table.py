"""The settings table: each plain gateway setting declared once.

A :class:`Setting` is one row: environment variable, Django setting, attribute name (the
name it is declared under in a :class:`SettingsGroup`), kind (how the variable is parsed
and the value typed), default, unit and a one-line doc. From the rows come

- the Django settings: :meth:`Table.django_settings` parses the environment
  (``gatewaysite/settings.py`` assigns the result);
- the typed settings objects: a ``Setting`` is a descriptor reading ``django.conf.settings``
  on every access, so ``override_settings`` works and nothing goes stale;
- the documentation: :meth:`Table.rows` renders markdown rows and :meth:`Table.sync` puts
  them into a document (the README), which a test keeps in step.

Settings that ``settings.py`` computes by hand (the node id, secrets, ``REDIS_URL``) are
typed with :class:`Derived`: read the same way, but neither parsed nor documented here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast, overload

from django.conf import settings

from gateway_core import env

T = TypeVar("T")

MIB = 1024 * 1024


class Kind(Generic[T]):
    """How a setting is parsed from its variable, typed at use time, and shown in docs."""

    def read(self, name: str, default: Any, environ: Mapping[str, str]) -> object:
        """The Django setting's value for the variable ``name`` (``ConfigError`` if bad)."""
        raise NotImplementedError(f"{type(self).__name__}.read")

    def coerce(self, value: object) -> T:
        """The typed value of a Django setting (which tests may override with anything)."""
        raise NotImplementedError(f"{type(self).__name__}.coerce")

    def show(self, default: Any, unit: str) -> str:
        return f"`{default}`" if default else "unset"


class Text(Kind[str]):
    def read(self, name: str, default: Any, environ: Mapping[str, str]) -> object:
        return env.text(name, default, environ=environ)

    def coerce(self, value: object) -> str:
        return str(value)


class Integer(Kind[int]):
    def __init__(self, *, minimum: int = 0) -> None:
        self.minimum = minimum

    def read(self, name: str, default: Any, environ: Mapping[str, str]) -> object:
        return env.integer(name, default, minimum=self.minimum, environ=environ)

    def coerce(self, value: object) -> int:
        return int(cast(Any, value))

    def show(self, default: Any, unit: str) -> str:
        if unit == "bytes" and default >= MIB and default % MIB == 0:
            return f"{default // MIB} MiB"
        return f"{default} {unit}".strip()


class Flag(Kind[bool]):
    def read(self, name: str, default: Any, environ: Mapping[str, str]) -> object:
        return env.flag(name, default, environ=environ)

    def coerce(self, value: object) -> bool:
        return bool(value)

    def show(self, default: Any, unit: str) -> str:
        return "on" if default else "off"


class Cidrs(Kind[tuple[str, ...]]):
    """Comma-separated networks; the Django setting is a list, the typed value a tuple."""

    def read(self, name: str, default: Any, environ: Mapping[str, str]) -> object:
        return env.cidrs(name, default, environ=environ)

    def coerce(self, value: object) -> tuple[str, ...]:
        return tuple(cast("Iterable[str]", value))


class Derived(Generic[T]):
    """Typed, read-at-use-time access to a Django setting that ``settings.py`` computes."""

    attribute = ""

    def __init__(self, kind: Kind[T], django: str) -> None:
        self.kind = kind
        self.django = django

    def __set_name__(self, owner: type, name: str) -> None:
        # A row may be shared by two groups (monitoring reuses gateway rows): one name.
        if self.attribute and self.attribute != name:
            raise TypeError(f"{self.django} declared as {self.attribute} and as {name}")
        self.attribute = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Derived[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> Derived[T] | T:
        if instance is None:
            return self
        return self.kind.coerce(getattr(settings, self.django))


class Setting(Derived[T]):
    """One row of the table. ``docs`` names the documentation table(s) it is listed in
    (``None``: documented by hand elsewhere); ``shown`` replaces the rendered default."""

    def __init__(
        self,
        kind: Kind[T],
        *,
        env: str,
        django: str,
        default: Any,
        doc: str,
        unit: str = "",
        docs: str | tuple[str, ...] | None = None,
        shown: str | None = None,
    ) -> None:
        super().__init__(kind, django)
        self.env = env
        self.default = default
        self.doc = doc
        self.unit = unit
        self.docs: tuple[str, ...] = (docs,) if isinstance(docs, str) else (docs or ())
        self.shown = shown

    def from_env(self, environ: Mapping[str, str]) -> object:
        return self.kind.read(self.env, self.default, environ)

    def row(self) -> str:
        shown = self.shown if self.shown is not None else self.kind.show(self.default, self.unit)
        return f"| `{self.env}` | {shown} | {self.doc} |"

    def __repr__(self) -> str:
        return f"<Setting {self.attribute}: {self.env} -> {self.django}>"


class SettingsGroup:
    """A typed settings object: its class attributes are :class:`Setting` rows."""

    @classmethod
    def rows(cls) -> list[Setting[Any]]:
        found: dict[int, Setting[Any]] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                if isinstance(value, Setting):
                    found[id(value)] = value
        return list(found.values())


class Table:
    """The rows of some settings groups, each once, in declaration order."""

    def __init__(self, *groups: type[SettingsGroup]) -> None:
        found: dict[int, Setting[Any]] = {}
        for group in groups:
            for row in group.rows():
                found.setdefault(id(row), row)
        self.settings: tuple[Setting[Any], ...] = tuple(found.values())
        for key in ("env", "django"):
            names = [getattr(row, key) for row in self.settings]
            twice = {name for name in names if names.count(name) > 1}
            if twice:
                raise TypeError(f"settings table: {key} names declared twice: {sorted(twice)}")

    def django_settings(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``{Django setting: value}`` parsed from ``environ`` (default: the process's)."""
        source = os.environ if environ is None else environ
        return {row.django: row.from_env(source) for row in self.settings}

    def rows(self, docs: str) -> list[str]:
        """The markdown rows of the documentation table ``docs``."""
        return [row.row() for row in self.settings if docs in row.docs]

    def sync(self, text: str, sections: Sequence[str]) -> str:
        """``text`` with its table rows for ``sections`` regenerated.

        The rows of each section stand together in one run of table lines (the hand-written
        rows of that table before or after them); runs appear in the order of ``sections``.
        """
        managed = {f"`{row.env}`" for row in self.settings if set(row.docs) & set(sections)}
        lines = text.split("\n")
        out: list[str] = []
        pending = list(sections)
        index = 0
        while index < len(lines):
            if not _mentions(lines[index], managed):
                out.append(lines[index])
                index += 1
                continue
            while index < len(lines) and _mentions(lines[index], managed):
                index += 1
            if not pending:
                raise ValueError(f"more runs of generated rows than sections {list(sections)}")
            out.extend(self.rows(pending.pop(0)))
        if pending:
            raise ValueError(f"no rows found for sections {pending}")
        return "\n".join(out)


def _mentions(line: str, names: Iterable[str]) -> bool:
    if not line.startswith("| "):
        return False
    first_cell = line.split("|")[1]
    return any(name in first_cell for name in names)

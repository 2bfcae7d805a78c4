"""Queries compiled once per process and database, then run with new values.

Django compiles every query it runs into SQL: for a task's 35 columns that was most of a lookup
by id (780 µs of a 1.7 ms GET of a task through Django, 150 µs when compiled once; in-process,
SQLite), and task GETs are what pollers send all day. A `Compiled` query is built by the ORM
(its filters are written as any other queryset) with stand-in values, once per shape and
database; the parameters that hold the stand-ins are found, and each call runs the same SQL
with its own values there and converts the row as the ORM does (the backend's and the fields'
converters, as returning.update_returning does).

`CompiledUpdate` does the same for a conditional UPDATE ... RETURNING (returning.update_returning):
a cancel's, whose answer the client waits for.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.models import DateTimeField, Model, UUIDField

from .returning import convert_row, update_sql


@dataclass(frozen=True)
class _Plan:
    sql: str
    params: tuple[Any, ...]  # the query's own parameters; None where a value goes
    slots: tuple[tuple[int, str, Any], ...]  # (parameter index, value name, its field)
    converters: dict[int, tuple[list, Any]]  # {column: (converters, expression)}
    attnames: tuple[str, ...]


class Compiled:
    """`build(shape, **values)` -> a queryset of whole `model` rows (no only(), no annotations)
    with each value compared to the model field named for it in `fields` ({value name: field
    name}). `first()` runs it with the caller's values."""

    def __init__(self, model: type[Model], build: Callable[..., Any], **fields: str) -> None:
        self.model = model
        self.build = build
        self.fields = fields
        self._plans: dict[tuple, _Plan] = {}

    def first(self, *, shape: Hashable = None, using: str = "default", **values) -> Model | None:
        """The first row the query finds with these values, or None (as QuerySet.first(), in
        the database's own order: give the shape a unique lookup)."""
        plan, row = self._run(shape, using, values, lambda cursor: cursor.fetchone())
        return None if row is None else self._load(plan, using, row)

    def _run(self, shape: Hashable, using: str, values: dict, fetch: Callable) -> tuple[_Plan, Any]:
        """The plan for these values' names (compiled on first use), and what `fetch(cursor)`
        gave once the plan ran with the values."""
        key = (shape, using, tuple(sorted(values)))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(shape, using, sorted(values))
        connection = connections[using]
        params = list(plan.params)
        for index, name, field in plan.slots:
            params[index] = field.get_db_prep_value(values[name], connection, prepared=False)
        with connection.cursor() as cursor:
            cursor.execute(plan.sql, params)
            return plan, fetch(cursor)

    def _load(self, plan: _Plan, using: str, row) -> Model:
        return self.model.from_db(using, plan.attnames, convert_row(row, plan.converters, connections[using]))

    def _field(self, name: str):
        field = self.model._meta.get_field(self.fields[name])
        return field.target_field if field.is_relation else field

    def _compile(self, shape: Hashable, using: str, stand_ins: dict) -> tuple[str, list, dict]:
        """(SQL, its parameters, the converters of its columns) of the query with `stand_ins`."""
        rows = self.build(shape, **stand_ins).order_by()
        compiler = rows.query.get_compiler(using)
        sql, params = compiler.as_sql()
        if rows.model is not self.model or [col.target for col, _, _ in compiler.select] != list(
            self.model._meta.concrete_fields
        ):
            raise ValueError(f"{type(self).__name__}: the query must select whole {self.model.__name__} rows")
        return sql, list(params), compiler.get_converters([col for col, _, _ in compiler.select])

    def _plan(self, shape: Hashable, using: str, names: list[str]) -> _Plan:
        connection = connections[using]
        stand_ins = {name: self._stand_in(name) for name in names}
        sql, params, converters = self._compile(shape, using, stand_ins)
        prepared = {name: self._field(name).get_db_prep_value(value, connection) for name, value in stand_ins.items()}
        slots = [(index, name) for index, param in enumerate(params) for name in names if param == prepared[name]]
        indexes = {index for index, _ in slots}
        if {name for _, name in slots} != set(names) or len(indexes) != len(slots):
            raise ValueError(f"{type(self).__name__}: each value must be a parameter of its own: {sql}")
        return _Plan(
            sql=sql,
            params=tuple(None if index in indexes else param for index, param in enumerate(params)),
            slots=tuple((index, name, self._field(name)) for index, name in slots),
            converters=converters,
            attnames=tuple(field.attname for field in self.model._meta.concrete_fields),
        )

    def _stand_in(self, name: str):
        """A value no query holds of itself, of the type of its field."""
        field = self._field(name)
        if isinstance(field, UUIDField):
            return uuid.uuid4()
        if isinstance(field, DateTimeField):
            return datetime(1901, 2, 3, microsecond=secrets.randbelow(10**6), tzinfo=UTC)
        if field.get_internal_type() in ("AutoField", "BigAutoField", "IntegerField", "BigIntegerField"):
            return -secrets.randbelow(2**40) - 2**41
        return f"\x00stand-in-{name}-{secrets.token_hex(8)}"


class CompiledUpdate(Compiled):
    """`build(shape, **values)` -> (rows, changes): `rows.update(**changes)` for a query that
    matches at most one row, each value either compared (in `rows`) or written (in `changes`).
    A value that is None is left out by the caller (the SQL writes NULL there, not a parameter)."""

    def update_returning(self, *, shape: Hashable = None, using: str = "default", **values) -> Model | None:
        """The row as the UPDATE left it (every concrete field), or None when nothing matched."""
        plan, found = self._run(shape, using, values, lambda cursor: cursor.fetchall())
        if len(found) > 1:
            raise ValueError(f"{type(self).__name__} changed {len(found)} rows of {self.model.__name__}, not one")
        return self._load(plan, using, found[0]) if found else None

    def _compile(self, shape: Hashable, using: str, stand_ins: dict) -> tuple[str, list, dict]:
        rows, changes = self.build(shape, **stand_ins)
        return update_sql(rows, changes, using)

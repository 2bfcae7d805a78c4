"""Writes in one statement that the ORM makes in several round trips to the database.

`update_returning`: a QuerySet.update() that also returns the row it changed.

`rows.update(...)` and then `Model.objects.get(...)` cost two round trips to the database and
the ORM's query building twice; each state change of a task (start, page, finish, cancel) did
both, inside its transaction. `UPDATE ... RETURNING` (PostgreSQL; SQLite since 3.35) gives the
same row at once. The values are converted as Django converts the rows an INSERT returns
(SQLInsertCompiler.execute_sql): the backend's and the fields' converters.

`locked_clock`: the time a conditional UPDATE writes, read as it runs, not before.

`insert_together`: new rows of several models, as `save()` inserts each, in one statement on
PostgreSQL (INSERTs in a WITH). A cancel stores its event, its operator feed item and its
audit: three round trips before its answer, about 1 ms each on a loaded machine.
"""

from __future__ import annotations

from django.db import connections
from django.db.models import DateTimeField, Func, Model, QuerySet
from django.db.models.sql import InsertQuery, UpdateQuery
from django.utils import timezone


def update_returning(rows: QuerySet, **values) -> Model | None:
    """`rows.update(**values)` for a query that matches at most one row: that row as it is
    after the UPDATE (every concrete field), or None when nothing matched."""
    model = rows.model
    sql, params, converters = update_sql(rows, values)
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"update_returning changed {len(found)} rows of {model.__name__}, not one")
    row = convert_row(found[0], converters, connections[rows.db])
    return model.from_db(rows.db, [field.attname for field in model._meta.concrete_fields], row)


def convert_row(row, converters: dict, connection) -> list:
    """`row` with each column converted as the ORM converts what it reads (`converters`: as
    compiler.get_converters gives them, {column: (converters, expression)})."""
    row = list(row)
    for column, (functions, expression) in converters.items():
        for function in functions:
            row[column] = function(row[column], expression, connection)
    return row


def update_sql(rows: QuerySet, values: dict, using: str | None = None) -> tuple[str, list, dict]:
    """`rows.update(**values)` on `using` (else the queryset's database) as SQL ... RETURNING
    every concrete column, its parameters, and the converters of the columns it returns (as
    compiler.get_converters gives them: {column: (converters, expression)})."""
    using = using or rows.db
    model = rows.model
    query = rows.query.chain(UpdateQuery)
    query.add_update_values(values)
    compiler = query.get_compiler(using)
    compiler.pre_sql_setup()
    sql, params = compiler.as_sql()
    fields = model._meta.concrete_fields
    returning = ", ".join(connections[using].ops.quote_name(field.column) for field in fields)
    converters = compiler.get_converters([field.get_col(model._meta.db_table) for field in fields])
    return f"{sql} RETURNING {returning}", list(params), converters


DATABASE_CLOCK = Func(function="CLOCK_TIMESTAMP", output_field=DateTimeField())  # PostgreSQL's, as it runs


def locked_clock(using: str = "default"):
    """A time for an UPDATE to write that is later than every write committed before the rows it
    changes were locked: PostgreSQL's clock as the UPDATE runs (after any row lock it waited
    for, DATABASE_CLOCK); on SQLite, where transactions take the write lock as they begin
    (IMMEDIATE, ocrsite/settings.py), the time now."""
    if connections[using].vendor == "postgresql":
        return DATABASE_CLOCK
    return timezone.now()


def insert_together(*objs: Model | None, using: str = "default") -> None:
    """Insert `objs` (new instances, each of a model with an auto primary key; None skipped) as
    `obj.save()` would, each getting its primary key; in one statement where the database can
    (PostgreSQL), else one by one. Model signals are not sent (none of ours has receivers)."""
    objs = tuple(obj for obj in objs if obj is not None)
    connection = connections[using]
    if connection.vendor != "postgresql" or len(objs) < 2:
        for obj in objs:
            obj.save(force_insert=True, using=using)
        return
    parts, params = [], []
    for number, obj in enumerate(objs):
        meta = obj._meta
        query = InsertQuery(type(obj))
        fields = [f for f in meta.local_concrete_fields if not f.generated and f is not meta.auto_field]
        query.insert_values(fields, [obj])
        compiler = query.get_compiler(using=using)
        compiler.returning_fields = [meta.pk]
        [(sql, values)] = compiler.as_sql()
        parts.append(f"r{number} AS ({sql})")
        params.extend(values)
    ids = ", ".join(f"(SELECT * FROM r{number})" for number in range(len(objs)))
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} SELECT {ids}", params)
        row = cursor.fetchone()
    for obj, pk in zip(objs, row, strict=True):
        obj.pk = pk
        obj._state.adding, obj._state.db = False, using

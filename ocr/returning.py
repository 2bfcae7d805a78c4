"""`update_returning`: a QuerySet.update() that also returns the row it changed, in one statement.

`rows.update(...)` and then `Model.objects.get(...)` cost two round trips to the database and
the ORM's query building twice; each state change of a task (start, page, finish, cancel) did
both, inside its transaction. `UPDATE ... RETURNING` (PostgreSQL; SQLite since 3.35) gives the
same row at once. The values are converted as Django converts the rows an INSERT returns
(SQLInsertCompiler.execute_sql): the backend's and the fields' converters.
"""

from __future__ import annotations

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.sql import UpdateQuery


def update_returning(rows: QuerySet, **values) -> Model | None:
    """`rows.update(**values)` for a query that matches at most one row: that row as it is
    after the UPDATE (every concrete field), or None when nothing matched."""
    model = rows.model
    query = rows.query.chain(UpdateQuery)
    query.add_update_values(values)
    compiler = query.get_compiler(rows.db)
    compiler.pre_sql_setup()
    sql, params = compiler.as_sql()
    fields = model._meta.concrete_fields
    connection = connections[rows.db]
    returning = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {returning}", params)
        found = cursor.fetchall()
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"update_returning changed {len(found)} rows of {model.__name__}, not one")
    converters = compiler.get_converters([field.get_col(model._meta.db_table) for field in fields])
    if converters:
        found = list(compiler.apply_converters(found, converters))
    return model.from_db(rows.db, [field.attname for field in fields], found[0])

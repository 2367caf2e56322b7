"""The membership table and its change set, upserted into PostgreSQL in one transaction for a CRM or a
reverse-ETL tool to read (``score.sink=postgresql://user@host:port/database``).

Two tables, created when missing: ``<table>`` mirrors the current membership with what a CRM acts on
(customer_id, segment_id, segment_name; a row is rewritten only when its segment id or name changed, so
``assigned_as_of`` is the scoring date since which the customer is where it is and a retrain that keeps
the ids rewrites nothing; customers no longer scored are deleted), and ``<table>_changes`` accumulates
the change sets keyed by (as_of, customer_id) so a rescore of the same day replaces its own rows.
Either both are updated or neither (one transaction). Rows go in by COPY into a temporary table, then
one INSERT ... ON CONFLICT.

The URL carries no password: libpq reads it from ``PGPASSWORD`` or ``~/.pgpass`` (a password in a
config would land in Hydra's output folder and in shell history).
"""

from __future__ import annotations

import io
import re
from urllib.parse import parse_qsl, urlencode, urlsplit

import pandas as pd

from customer_value.errors import UserError

SCHEMES = ("postgresql", "postgres")
TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,50}")
STAGING = "customer_value_sync_"  # the temporary tables' prefix (a table named so would be shadowed)

_MEMBERSHIP = """CREATE TABLE IF NOT EXISTS {table} (
    customer_id text PRIMARY KEY,
    segment_id text NOT NULL,
    segment_name text NOT NULL,
    assigned_as_of date NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now()
)"""
_CHANGES = """CREATE TABLE IF NOT EXISTS {changes} (
    as_of date NOT NULL,
    customer_id text NOT NULL,
    change text NOT NULL CHECK (change IN ('added', 'changed', 'removed')),
    old_segment_id text,
    new_segment_id text,
    synced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (as_of, customer_id)
)"""
_UPSERT_MEMBERSHIP = """INSERT INTO {table} AS t (customer_id, segment_id, segment_name, assigned_as_of)
SELECT customer_id, segment_id, segment_name, as_of FROM customer_value_sync_membership
ON CONFLICT (customer_id) DO UPDATE SET
    segment_id = excluded.segment_id, segment_name = excluded.segment_name,
    assigned_as_of = excluded.assigned_as_of, synced_at = now()
WHERE (t.segment_id, t.segment_name) IS DISTINCT FROM (excluded.segment_id, excluded.segment_name)"""
_DELETE_GONE = """DELETE FROM {table} AS t
WHERE NOT EXISTS (SELECT 1 FROM customer_value_sync_membership s WHERE s.customer_id = t.customer_id)"""
_UPSERT_CHANGES = """INSERT INTO {changes} AS c (as_of, customer_id, change, old_segment_id, new_segment_id)
SELECT as_of, customer_id, change, old_segment_id, new_segment_id FROM customer_value_sync_changes
ON CONFLICT (as_of, customer_id) DO UPDATE SET
    change = excluded.change, old_segment_id = excluded.old_segment_id,
    new_segment_id = excluded.new_segment_id, synced_at = now()"""


def check_sink_url(url: str, key: str = "score.sink") -> None:
    """A one-line error for a URL the sink cannot or must not use (not PostgreSQL, or with a password)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname or not parts.path.strip("/"):
        raise UserError(f"{key} must be postgresql://user@host[:port]/database, got '{safe_url(url)}'")
    if parts.password is not None or any(k.lower() == "password" for k, _ in parse_qsl(parts.query)):
        raise UserError(
            f"{key} carries a password: leave it out of configs and command lines and give it in "
            "PGPASSWORD or ~/.pgpass (libpq reads both)"
        )


def check_table_name(name: str, key: str = "score.sink_table") -> None:
    if not TABLE_NAME.fullmatch(name) or name.startswith(STAGING):
        raise UserError(
            f"{key} '{name}' must be a lower-case SQL name (letters, digits and _, at most 51) "
            f"not starting with {STAGING}"
        )


def safe_url(url: str) -> str:
    """``url`` without any password (in the user part or the query), for messages and logged parameters."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in query):
        masked = [(k, "***" if k.lower() == "password" else v) for k, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return parts.geturl()


def upsert_membership(
    url: str, table: str, membership: pd.DataFrame, changes: pd.DataFrame, key: str = "score.sink"
) -> dict[str, int]:
    """Upsert ``membership`` into ``table`` and ``changes`` into ``<table>_changes`` in one transaction;
    returns the rows each statement touched (rewritten memberships, deleted, change rows)."""
    check_sink_url(url, key)
    check_table_name(table)
    psycopg2, sql = _driver(key)
    names = {"table": sql.Identifier(table), "changes": sql.Identifier(f"{table}_changes")}
    as_of = pd.Timestamp(membership["as_of"].iloc[0]).date() if len(membership) else None
    connection = _connect(psycopg2, url, key)
    try:
        with connection, connection.cursor() as cursor:  # one transaction: commit at the end, else rollback
            cursor.execute(sql.SQL(_MEMBERSHIP).format(**names))
            cursor.execute(sql.SQL(_CHANGES).format(**names))
            cursor.execute(sql.SQL("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE").format(**names))
            cursor.execute(
                "CREATE TEMPORARY TABLE customer_value_sync_membership "
                "(customer_id text, segment_id text, segment_name text, as_of date) ON COMMIT DROP"
            )
            _copy(cursor, "customer_value_sync_membership", _membership_rows(membership))
            cursor.execute(sql.SQL(_UPSERT_MEMBERSHIP).format(**names))
            rewritten = cursor.rowcount
            cursor.execute(sql.SQL(_DELETE_GONE).format(**names))
            deleted = cursor.rowcount
            cursor.execute(
                "CREATE TEMPORARY TABLE customer_value_sync_changes (as_of date, customer_id text, "
                "change text, old_segment_id text, new_segment_id text) ON COMMIT DROP"
            )
            _copy(cursor, "customer_value_sync_changes", changes.assign(as_of=as_of)[_CHANGE_ORDER])
            cursor.execute(sql.SQL(_UPSERT_CHANGES).format(**names))
            changed = cursor.rowcount
    except psycopg2.Error as exc:
        raise UserError(f"{key} {safe_url(url)} table {table}: {_first_line(exc)}; nothing written") from None
    finally:
        connection.close()
    return {"rewritten": rewritten, "deleted": deleted, "changes": changed}


def delete_customers(url: str, table: str, ids: list[str], key: str = "forget.sink") -> dict[str, int]:
    """Forgotten customers out of ``table`` and ``<table>_changes`` (their history too), in one
    transaction; returns the rows deleted from each. Tables that do not exist yet hold nobody."""
    check_sink_url(url, key)
    check_table_name(table, f"{key}_table")
    psycopg2, sql = _driver(key)
    names = {"table": sql.Identifier(table), "changes": sql.Identifier(f"{table}_changes")}
    connection = _connect(psycopg2, url, key)
    try:
        with connection, connection.cursor() as cursor:
            deleted = {}
            for name, identifier in names.items():
                # found by the search path, as the sync's own statements find it
                cursor.execute("SELECT to_regclass(%s)", (table if name == "table" else f"{table}_changes",))
                if cursor.fetchone()[0] is None:
                    deleted[name] = 0
                    continue
                cursor.execute(
                    sql.SQL("DELETE FROM {name} WHERE customer_id = ANY(%s)").format(name=identifier), (ids,)
                )
                deleted[name] = cursor.rowcount
    except psycopg2.Error as exc:
        raise UserError(f"{key} {safe_url(url)} table {table}: {_first_line(exc)}; nothing deleted") from None
    finally:
        connection.close()
    return {"membership": deleted["table"], "changes": deleted["changes"]}


def _driver(key: str) -> tuple[object, object]:
    try:
        import psycopg2
        from psycopg2 import sql
    except ImportError:
        raise UserError(
            f"{key} needs PostgreSQL's driver: pip install -e '.[server]' (make venv installs it)"
        ) from None
    return psycopg2, sql


def _connect(psycopg2: object, url: str, key: str) -> object:
    try:
        return psycopg2.connect(url, connect_timeout=10, application_name="customer-value")  # type: ignore[attr-defined]
    except psycopg2.OperationalError as exc:  # type: ignore[attr-defined]
        raise UserError(f"{key} {safe_url(url)}: cannot connect ({_first_line(exc)})") from None


_CHANGE_ORDER = ["as_of", "customer_id", "change", "old_segment_id", "new_segment_id"]


def _membership_rows(membership: pd.DataFrame) -> pd.DataFrame:
    columns = ["customer_id", "segment_id", "segment_name", "as_of"]
    return membership[columns].assign(as_of=pd.to_datetime(membership["as_of"]).dt.date)


def _copy(cursor: object, table: str, frame: pd.DataFrame) -> None:
    """COPY ``frame`` into ``table`` as CSV (empty fields are NULL): the fast path for a million rows."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", buffer)  # type: ignore[attr-defined]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

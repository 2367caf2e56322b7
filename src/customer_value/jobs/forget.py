"""``python -m customer_value.privacy forget --ids FILE`` (``make forget IDS=FILE``): customers forgotten
on request.

1. Their keyed hashes join the suppression list (written first, so every later load leaves their orders
   out even if step 2 is interrupted; rerunning the request finishes it).
2. Every table under ``forget.outputs`` (scoring tables, membership and change sets, migrations, campaign
   lists; CSV or Parquet, any file with a ``customer_id`` column) is rewritten without their rows, by id or
   by pseudonym, each atomically (a crash leaves the old file or the new one).

3. With ``forget.sink`` (the URL scoring syncs to), their rows are deleted from the membership table and
   its change history in PostgreSQL, in one transaction.

Prints what it changed: files and row counts, never ids. A table it cannot read fails the job after the
others are done (exit 1, the files named): rows may remain there. The registered models need no
retraining: they hold parameters and aggregates, never customer rows (docs/privacy.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from customer_value.crm.sink import check_sink_url, check_table_name, delete_customers, safe_url
from customer_value.errors import UserError
from customer_value.jobs.atomic_files import StagedFiles
from customer_value.jobs.entrypoint import run_job
from customer_value.privacy.erasure import ID_COLUMN, read_request_ids, rows_of
from customer_value.privacy.hashing import privacy_key, pseudonyms, suppression_hashes
from customer_value.privacy.suppression_list import SuppressionList
from customer_value.schema import CONF_DIR, register_configs

log = logging.getLogger(__name__)
TABLE_SUFFIXES = (".parquet", ".pq", ".csv")


@dataclass(frozen=True)
class Rewritten:
    path: Path
    rows_removed: int
    rows_left: int


@dataclass(frozen=True)
class Forgotten:
    new: int  # customers new on the suppression list
    rewritten: list[Rewritten]
    unreadable: list[Path]  # tables that could not be read: rows may remain there
    sink_rows: dict[str, int] | None  # rows deleted from the PostgreSQL sink's tables (forget.sink)


def forget(cfg: DictConfig) -> Forgotten:
    """Add the request's customers to the suppression list and take them out of every output."""
    options = cfg.forget
    if not options.ids:
        raise UserError("forget needs the request's file: --ids FILE (or forget.ids=FILE)")
    ids = read_request_ids(options.ids)  # a bad file stops here: nothing changed
    folders = [Path(folder) for folder in options.outputs]
    if options.sink is not None:
        check_sink_url(str(options.sink), "forget.sink")
        check_table_name(str(options.sink_table), "forget.sink_table")
    with SuppressionList.locked(cfg.privacy.suppression_list):  # one forget at a time: none lost
        listed = SuppressionList.read(cfg.privacy.suppression_list)
        key = privacy_key(cfg.privacy.key_file, len(listed))
        listed.check_key(key)
        updated, new = listed.with_added(
            suppression_hashes(ids, key), options.reason, dt.date.today().isoformat(), key
        )
        updated.write()
    wanted, masked = set(ids), set(pseudonyms(ids, key))
    rewritten, unreadable = [], []
    for path in (p for folder in folders if folder.is_dir() for p in sorted(folder.rglob("*"))):
        if not _is_table(path):
            continue
        try:
            change = _without(path, wanted, masked)
        except _Unreadable:
            unreadable.append(path)
            continue
        if change is not None:
            rewritten.append(change)
    sink_rows = None
    if options.sink is not None:
        sink_rows = delete_customers(str(options.sink), str(options.sink_table), ids)
    return Forgotten(new, rewritten, unreadable, sink_rows)


class _Unreadable(Exception):
    pass


def _is_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES and not path.name.endswith(".tmp")


def _without(path: Path, ids: set[str], masked: set[str]) -> Rewritten | None:
    """Rewrite ``path`` without the customers' rows, other cells exactly as they were; None if it has none
    (or no customer_id column)."""
    table = _read(path)
    if table is None or ID_COLUMN not in table.columns:
        return None
    drop = rows_of(table[ID_COLUMN], ids, masked)
    if not drop.any():
        return None
    kept = table[~drop.to_numpy()]
    with StagedFiles("forget.outputs") as staged:
        if path.suffix.lower() == ".csv":
            staged.text(kept.to_csv(index=False), path)
        else:
            staged.table(kept, path)
        staged.commit()
    (path.parent / f".{path.name}.crc").unlink(missing_ok=True)  # a Spark part's checksum: now stale
    return Rewritten(path, int(drop.sum()), len(kept))


def _read(path: Path) -> pd.DataFrame | None:
    try:
        if path.suffix.lower() == ".csv":  # as text: every other cell is written back as it was
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except Exception as exc:  # readers raise many types: said at the end, and the job fails
        log.warning("forget: %s is not a readable table (%s)", path, type(exc).__name__)
        raise _Unreadable from None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="forget")
def main(cfg: DictConfig) -> None:
    done = run_job(forget, cfg)
    print(
        f"forget: {done.new:,} customer(s) added to the suppression list {cfg.privacy.suppression_list} "
        f"(reason {cfg.forget.reason}); their orders are left out of every later load"
    )
    for change in done.rewritten:
        print(f"forget: {change.path}: removed {change.rows_removed:,} row(s), {change.rows_left:,} left")
    if not done.rewritten:
        print(f"forget: no output under {list(cfg.forget.outputs)} held them")
    if done.sink_rows is not None:
        table, where = cfg.forget.sink_table, safe_url(str(cfg.forget.sink))
        print(
            f"forget: {table} lost {done.sink_rows['membership']:,} row(s) and "
            f"{table}_changes {done.sink_rows['changes']:,} at {where}"
        )
    if done.unreadable:
        names = ", ".join(str(p) for p in done.unreadable[:5])
        print(
            f"error: {len(done.unreadable)} table(s) could not be read, so they may still hold them: "
            f"{names}; fix or remove them and run the same request again",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    register_configs()
    main()

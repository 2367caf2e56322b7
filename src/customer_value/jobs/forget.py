"""``python -m customer_value.privacy forget --ids FILE`` (``make forget IDS=FILE``): customers forgotten
on request.

1. Their keyed hashes join the suppression list (written first, so every later load leaves their orders
   out even if step 2 is interrupted; rerunning the request finishes it).
2. Every table under ``forget.outputs`` (scoring tables, membership and change sets, migrations, campaign
   lists; CSV or Parquet, any file with a ``customer_id`` column) is rewritten without their rows, by id or
   by pseudonym, each atomically (a crash leaves the old file or the new one).

Prints what it changed: files and row counts, never ids. The registered models need no retraining: they
hold parameters and aggregates, never customer rows (docs/privacy.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from customer_value.errors import UserError
from customer_value.jobs.atomic_files import StagedFiles
from customer_value.jobs.entrypoint import run_job
from customer_value.privacy.erasure import ID_COLUMN, read_request_ids, rows_of
from customer_value.privacy.hashing import privacy_key, pseudonyms, suppression_hashes
from customer_value.privacy.suppression_list import SuppressionList
from customer_value.schema import CONF_DIR, register_configs

log = logging.getLogger(__name__)
TABLE_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class Rewritten:
    path: Path
    rows_removed: int
    rows_left: int


def forget(cfg: DictConfig) -> tuple[int, list[Rewritten]]:
    """Add the request's customers to the suppression list and take them out of every output; returns
    how many were new on the list and the files rewritten."""
    options = cfg.forget
    if not options.ids:
        raise UserError("forget needs the request's file: --ids FILE (or forget.ids=FILE)")
    ids = read_request_ids(options.ids)  # a bad file stops here: nothing changed
    folders = [Path(folder) for folder in options.outputs]
    listed = SuppressionList.read(cfg.privacy.suppression_list)
    key = privacy_key(cfg.privacy.key_file, len(listed))
    listed.check_key(key)
    updated, new = listed.with_added(
        suppression_hashes(ids, key), options.reason, dt.date.today().isoformat(), key
    )
    updated.write()
    wanted, masked = set(ids), set(pseudonyms(ids, key))
    rewritten = [
        change
        for folder in folders
        if folder.is_dir()
        for path in sorted(folder.rglob("*"))
        if _is_table(path) and (change := _without(path, wanted, masked)) is not None
    ]
    return new, rewritten


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
    return Rewritten(path, int(drop.sum()), len(kept))


def _read(path: Path) -> pd.DataFrame | None:
    try:
        if path.suffix.lower() == ".csv":  # as text: every other cell is written back as it was
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except Exception as exc:  # a file this cannot read is not one of the project's outputs: said, left
        log.warning("forget: %s is not a readable table (%s); left as it is", path, type(exc).__name__)
        return None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="forget")
def main(cfg: DictConfig) -> None:
    new, rewritten = run_job(forget, cfg)
    print(
        f"forget: {new:,} customer(s) added to the suppression list {cfg.privacy.suppression_list} "
        f"(reason {cfg.forget.reason}); their orders are left out of every later load"
    )
    for change in rewritten:
        print(f"forget: {change.path}: removed {change.rows_removed:,} row(s), {change.rows_left:,} left")
    if not rewritten:
        print(f"forget: no output under {list(cfg.forget.outputs)} held them")


if __name__ == "__main__":
    register_configs()
    main()

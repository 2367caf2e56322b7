"""Files written all or nothing: each is written to a temporary file beside its target and renamed into
place, so a reader sees the old file or the new one, never half. ``StagedFiles`` holds several such
files back until every one is written (and, e.g., a database sink has committed), then swaps them in.

A killed job runs no cleanup: its hidden temporary files carry its process's owner id and the next write
to the same target removes them once that process has ended.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from customer_value.errors import UserError
from customer_value.tracking import processes

log = logging.getLogger(__name__)


def write_table_atomically(table: pd.DataFrame, output: Path) -> Path:
    """Write to a temporary file in the target folder, then rename: readers see all or nothing."""
    return write_chunks_atomically([table], output)[0]


def write_chunks_atomically(chunks: Iterable[pd.DataFrame], output: Path) -> tuple[Path, int]:
    """Append each chunk to a temporary file in the target folder, then rename it into place; returns
    the path and the rows written. A failure in any chunk (or in producing it) leaves nothing behind."""
    with StagedFiles() as staged:
        rows = staged.table_chunks(chunks, output)
        staged.commit()
    return output, rows


def write_text_atomically(text: str, output: Path, key: str) -> Path:
    """Write text (a report page) as ``write_chunks_atomically`` writes tables: all or nothing; ``key``
    names the setting that chose ``output`` in an error."""
    with StagedFiles(key) as staged:
        staged.text(text, output)
        staged.commit()
    return output


class StagedFiles:
    """Files written now and swapped into place together by ``commit``, so that a job that fails after
    writing some of its outputs (or before its database sink commits) leaves every target as it was.

    Each rename is atomic; a crash between two renames leaves some targets new and the rest old, each
    whole. Leaving the ``with`` block without ``commit`` removes the staged files."""

    def __init__(self, key: str = "score.output") -> None:
        self.key = key  # the setting that chose the targets, named in an error
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target), in commit order

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def table_chunks(self, chunks: Iterable[pd.DataFrame], output: Path) -> int:
        """Stage a table written chunk by chunk (CSV or Parquet by ``output``'s suffix); returns its rows."""
        tmp = self._stage(output)
        rows = 0
        if output.suffix.lower() == ".csv":
            for index, chunk in enumerate(chunks):
                chunk.to_csv(tmp, index=False, mode="w" if index == 0 else "a", header=index == 0)
                rows += len(chunk)
        else:
            rows = _write_parquet_chunks(chunks, tmp)
        return rows

    def table(self, table: pd.DataFrame, output: Path) -> None:
        self.table_chunks([table], output)

    def text(self, text: str, output: Path) -> None:
        self._stage(output).write_text(text, encoding="utf-8")

    def commit(self) -> None:
        """Rename every staged file onto its target, in the order staged."""
        while self._staged:
            tmp, output = self._staged[0]
            os.replace(tmp, output)
            self._staged.pop(0)

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def _stage(self, output: Path) -> Path:
        tmp = _temporary_beside(output, self.key)
        self._staged.append((tmp, output))
        return tmp


def _temporary_beside(output: Path, key: str = "score.output") -> Path:
    """An empty temporary file in the target's folder, named after its owner (so that a later job can
    remove it if this one is killed) and readable like any other file."""
    prefix = f".{output.name}.{processes.current_owner()}."
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temp_files(output)
        handle, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise UserError(f"{key} {output}: cannot write there ({exc.strerror})") from None
    os.close(handle)
    tmp = Path(tmp_name)
    try:  # a file rewritten in place keeps its mode (a 0600 extract stays private)
        mode = output.stat().st_mode & 0o777
    except OSError:  # a new file reads like any other (mkstemp creates 0600)
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp.chmod(mode)
    return tmp


def remove_abandoned_temp_files(output: Path) -> list[Path]:
    """Delete the temporary files of earlier writes to ``output`` whose process has ended (a SIGKILLed
    job runs no cleanup); a live writer's file, or one this cannot judge, is left alone. Best effort:
    returns what was removed."""
    named = re.compile(rf"\.{re.escape(output.name)}\.({processes.OWNER_PATTERN})\.[A-Za-z0-9_]+\.tmp")
    removed: list[Path] = []
    for leftover in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
        match = named.fullmatch(leftover.name)
        if match is None or processes.is_alive(match.group(1)):
            continue
        try:
            leftover.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s, left by an ended process (%s)", leftover, exc.strerror)
            continue
        removed.append(leftover)
        log.warning("removed %s, left by an ended process", leftover)
    return removed


def _write_parquet_chunks(chunks: Iterable[pd.DataFrame], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, rows = None, 0
    try:
        for chunk in chunks:
            if writer is None:  # the first chunk's types are the file's
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                writer = pq.ParquetWriter(path, table.schema)
            else:
                table = pa.Table.from_pandas(chunk, schema=writer.schema, preserve_index=False)
            writer.write_table(table)
            rows += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("no rows to write")
    return rows

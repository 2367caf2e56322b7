"""Every notebook under notebooks/ runs top to bottom (outputs are never written back to disk)."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_executes(notebook: pathlib.Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    # Raises CellExecutionError (naming the cell and the exception) if any cell fails; nb stays in memory.
    client.execute()


def test_the_exploration_notebook_is_collected() -> None:
    """An empty parametrisation would pass silently; the CDNOW notebook must be among those executed."""
    assert "01-explore-cdnow.ipynb" in [path.name for path in NOTEBOOKS]

"""The served models (REST, ``make serve``) honour the suppression list where a request names customers.

A request may carry a ``customer_id`` column beside the model's inputs: the answer then carries it too, as
its first column, and has no row for a customer on the suppression list (erased or objecting by request).
The list is named by ``CUSTOMER_VALUE_SUPPRESSION_LIST`` (``make serve`` sets it to the project's) and
reread whenever the file changes, so a ``make forget`` takes effect on the next request; its key comes from
``PRIVACY_KEY`` or ``CUSTOMER_VALUE_PRIVACY_KEY_FILE``. A request without ids is answered as it always was.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd

from customer_value.privacy.erasure import ID_COLUMN
from customer_value.privacy.hashing import privacy_key, suppression_hashes
from customer_value.privacy.suppression_list import SuppressionList

LIST_ENV = "CUSTOMER_VALUE_SUPPRESSION_LIST"
KEY_FILE_ENV = "CUSTOMER_VALUE_PRIVACY_KEY_FILE"


class ServedSuppression:
    """The suppression list as the serving process last read it (reloaded when its file changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[str, int, int] | None = None
        self._hashes: frozenset[str] = frozenset()
        self._key: bytes | None = None

    def _current(self) -> tuple[frozenset[str], bytes | None]:
        path = os.environ.get(LIST_ENV)
        if not path or not Path(path).exists():
            return frozenset(), None
        status = Path(path).stat()
        stamp = (path, status.st_mtime_ns, status.st_size)
        with self._lock:
            if stamp != self._stamp:
                listed = SuppressionList.read(path)
                key = None
                if len(listed):
                    key = privacy_key(os.environ.get(KEY_FILE_ENV, ".secrets/privacy.key"), len(listed))
                    listed.check_key(key)
                self._hashes, self._key, self._stamp = frozenset(listed.hashes()), key, stamp
            return self._hashes, self._key

    def answer(self, request: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
        """``predicted`` (row by row with ``request``) with the request's ids first and the listed
        customers' rows removed; unchanged for a request without ids."""
        if not isinstance(request, pd.DataFrame) or ID_COLUMN not in request.columns:
            return predicted
        ids = request[ID_COLUMN].astype(str).str.strip().to_numpy()
        answer = predicted.reset_index(drop=True)
        answer.insert(0, ID_COLUMN, ids)
        hashes, key = self._current()
        if not hashes:
            return answer
        listed = pd.Series(suppression_hashes(ids, key)).isin(hashes).to_numpy()
        return answer[~listed].reset_index(drop=True)


SERVED = ServedSuppression()

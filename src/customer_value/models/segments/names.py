"""Human-readable segment names and recommended actions, from each segment's profile.

A segment's centre in the standardised log space (0 = the customer base's average) says how recent,
frequent, high-spending and long-tenured it is. The name follows the RFM vocabulary marketing teams use;
two segments that earn the same name are told apart by the dimension on which they differ most
("Lost (longer tenure)" / "Lost (shorter tenure)"), never by a bare number. Actions come from a
configurable mapping keyed by the base name
(``segmentation.actions`` in ``conf/segmentation/kmeans.yaml``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Dimension -> (column in the evaluation space, sign so that + means "more of it", words for more/less).
DIMENSIONS = {
    "recency": ("days_since_last", -1.0, ("more recent", "less recent")),
    "frequency": ("n_orders", 1.0, ("more frequent", "less frequent")),
    "spend": ("mean_order_value", 1.0, ("higher spend", "lower spend")),
    "tenure": ("T_days", 1.0, ("longer tenure", "shorter tenure")),
}
FALLBACK_ACTION = "Review manually: no action is configured for this segment"


def _directions(centres: pd.DataFrame) -> pd.DataFrame:
    """Centres re-expressed so that + means more recent / frequent / spend / tenure."""
    return pd.DataFrame({name: sign * centres[column] for name, (column, sign, _) in DIMENSIONS.items()})


def base_names(centres: pd.DataFrame) -> dict[int, str]:
    """RFM names from standardised centres (index: segment ids in value order, 0 = most valuable)."""
    d = _directions(centres)
    names: dict[int, str] = {}
    lapsed_infrequent = d[(d["recency"] <= 0) & (d["frequency"] <= 0)]
    longest_lapse = lapsed_infrequent["recency"].idxmin() if len(lapsed_infrequent) else None
    # With several lapsed, infrequent segments the longest-lapsed is Lost; a lone one only when clearly so.
    lost_floor = 0.0 if len(lapsed_infrequent) > 1 else -0.5
    for segment, row in d.iterrows():  # one row per segment, never per customer
        if row["recency"] > 0 and row["frequency"] > 0:
            name = "Champions" if segment == d.index.min() else "Loyal"
        elif row["recency"] > 0:
            name = "Promising newcomers" if row["tenure"] < 0 else "Needs attention"
        elif row["frequency"] > 0:
            name = "At risk"
        elif segment == longest_lapse and row["recency"] <= lost_floor:
            name = "Lost"
        elif row["spend"] > 0.5:
            name = "Hibernating big spenders"
        else:
            name = "Hibernating"
        names[int(segment)] = name
    return names


def distinguish(names: dict[int, str], centres: pd.DataFrame) -> dict[int, str]:
    """Qualify names shared by several segments with the dimension on which those segments differ most."""
    d = _directions(centres)
    result = dict(names)
    for name in set(names.values()):
        members = [s for s, n in names.items() if n == name]
        if len(members) < 2:
            continue
        spread = d.loc[members].max() - d.loc[members].min()
        dimension = str(spread.idxmax())
        more, less = DIMENSIONS[dimension][2]
        order = d.loc[members, dimension].sort_values(ascending=False).index
        numbered = len(members) > 3  # more than one middle member
        for rank, segment in enumerate(order):
            if rank == 0:
                qualifier = more
            elif rank == len(members) - 1:
                qualifier = less
            else:
                qualifier = f"mid {dimension}" + (f" {rank}" if numbered else "")
            result[int(segment)] = f"{name} ({qualifier})"
    return result


def name_segments(space: np.ndarray, columns: list[str], segments: np.ndarray) -> dict[int, str]:
    """Names for every segment from the evaluation space (standardised log features, ``columns``)."""
    centres = pd.DataFrame(space, columns=columns).groupby(segments).mean()
    return distinguish(base_names(centres), centres)


def action_for(name: str, actions: dict[str, str]) -> str:
    """The configured action for a (possibly qualified) name, else a prompt to review it."""
    return actions.get(name.split(" (")[0], FALLBACK_ACTION)

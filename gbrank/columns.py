"""Column names used across gbrank. Import these instead of writing string literals.

Internal frames use dense int32 codes for users and items (see ``gbrank.data.vocab``);
the raw ids of the input data only reappear at the edges (``recommend`` output).
"""

from __future__ import annotations

# Internal, coded event frame (see gbrank.data.io.load_events).
USER = "user"  # Int32 dense user code
ITEM = "item"  # Int32 dense item code
TS = "ts"  # Datetime("ms")
EVENT = "event"  # Int8 event type code, see EVENT_TYPES
SESSION = "session"  # Int64, optional
VALUE = "value"  # Float32 price x quantity, optional
QUANTITY = "quantity"  # Float32, optional

# Raw data contract (input files, after column mapping).
RAW_USER = "user_id"
RAW_ITEM = "item_id"
RAW_TS = "ts"
RAW_EVENT = "event"
RAW_SESSION = "session_id"
RAW_VALUE = "value"
RAW_QUANTITY = "quantity"

# Canonical event types, ordered by funnel depth. The code of a type is its index.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
EVENT_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}

# Targets are funnel stages; an event of a deeper type counts for the shallower targets too
# (a purchase implies the item was carted and clicked).
TARGETS: tuple[str, ...] = ("click", "cart", "purchase")

# Candidate frames.
SCORE = "score"
RANK = "rank"
SOURCE = "source"
N_SOURCES = "n_sources"

# Labels.
GRADE = "grade"  # graded relevance: 0 none, 1 + EVENT_CODE of the deepest event in the window


def label_col(target: str) -> str:
    """Binary label column of a target, e.g. ``label_purchase``."""
    return f"label_{target}"


def score_col(source: str) -> str:
    return f"{source}_score"


def rank_col(source: str) -> str:
    return f"{source}_rank"

"""Names and keys of feature sets: the one place a set's key is built and read back.

A set lives at `/{dataset}/{backbone}/{key}/`, so every part must be a plain name: a dataset or backbone called
`../x` would write outside the store (and its checkpoints outside bench's folders).
"""

from __future__ import annotations

import re

from featurestore.errors import StoreError

NAME_RULE = "a letter or digit, then letters, digits, '.', '_', '-' or '@' (as in efficientnet-lite1@448)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
FROZEN = "frozen"
TTA_VIEWS = {"dihedral": 8}  # each test-time augmentation and its views per image (bench.extract.tta)


def is_name(value: object) -> bool:
    """Whether `value` is safe as one path component everywhere bench uses names (`[A-Za-z0-9][A-Za-z0-9._@-]*`)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_tta(tta: str | None) -> str | None:
    """`tta` if it is a known test-time augmentation (or None); a set's key names it."""
    if tta is not None and tta not in TTA_VIEWS:
        raise StoreError(f"--tta {tta!r} is not known; choose one of: {', '.join(TTA_VIEWS)}")
    return tta


def feature_key(protocol: str | None = None, fold: str | None = None, tta: str | None = None) -> str:
    """`frozen`, or `ft-{protocol}-{fold}` for the model fine-tuned on that fold's training part; with test-time
    augmentation `tta`, a key of its own (`frozen-tta-dihedral`), so a TTA set never replaces the plain one.

    The protocol is part of the key because a fine-tune learns that protocol's classes.
    """
    if fold is None:
        base = FROZEN
    elif protocol is None:
        raise ValueError("a fine-tuned feature set needs its protocol as well as its fold")
    else:
        base = f"ft-{protocol}-{fold}"
    return f"{base}-tta-{check_tta(tta)}" if tta else base


def parse_key(key: str) -> tuple[str, str] | None:
    """(protocol, fold) of a fine-tuned set's key, None for `frozen`; fold keys (r0f1, official) hold no hyphen."""
    if not key.startswith("ft-"):
        return None
    protocol, fold = key[3:].partition("-tta-")[0].rsplit("-", 1)
    return protocol, fold

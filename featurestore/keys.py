"""Names and keys of feature sets: the one place a set's key is built and read back.

A set lives at `/{dataset}/{backbone}/{key}/`, so every part must be a plain name: a dataset or backbone called
`../x` would write outside the store (and its checkpoints outside bench's folders). A backbone may also be named by
a library's prefix (`timm:convnext_atto.d2_in1k`, `open_clip:ViT-B-32/openai`), whose ':' and '/' are encoded into
one path component (`path_part`) and decoded back (`name_of`).
"""

from __future__ import annotations

import re

from featurestore.errors import StoreError

NAME_RULE = "a letter or digit, then letters, digits, '.', '_', '-' or '@' (as in efficientnet-lite1@448)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
PREFIXED_RULE = "PREFIX:NAME (e.g. timm:resnet18.a1_in1k or open_clip:ViT-B-32/openai), without '--', '~' or '//'"
# PREFIX:REST; REST may hold ':' and '/' (open_clip:hf-hub:ORG/NAME) but not '--' or '~', which encode them
_PREFIXED = re.compile(r"[a-z][a-z0-9_-]*:(?!.*--)(?!.*//)[A-Za-z0-9][A-Za-z0-9._@:/-]*")
_ENCODING = ((":", "~"), ("/", "--"))  # reversible: a prefixed name holds neither '~' nor '--'
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


def is_prefixed(value: object) -> bool:
    """Whether `value` names a backbone by a library's prefix (`timm:NAME`), which `path_part` can encode."""
    return isinstance(value, str) and _PREFIXED.fullmatch(value) is not None and not value.endswith("/")


def is_backbone_name(value: object) -> bool:
    """A plain name or a prefixed one: what may name a backbone in the store and in bench's folders."""
    return is_name(value) or is_prefixed(value)


def path_part(name: str) -> str:
    """A backbone name as one path component: plain names as they are (so existing keys never change), prefixed
    ones with ':' as '~' and '/' as '--' (`timm:resnet18` -> `timm~resnet18`); `name_of` reads it back."""
    if is_name(name):
        return name
    if not is_prefixed(name):
        raise ValueError(f"{name!r} is not a backbone name: names are {NAME_RULE}, or {PREFIXED_RULE}")
    for char, code in _ENCODING:
        name = name.replace(char, code)
    return name


def name_of(part: str) -> str:
    """The backbone name a path component encodes (the inverse of `path_part`)."""
    if "~" not in part:  # a plain name: every encoded one holds its prefix's '~'
        return part
    for char, code in reversed(_ENCODING):
        part = part.replace(code, char)
    return part


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

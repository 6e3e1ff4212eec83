"""A checksum of a checkpoint's content, written into the file and verified when it is read, so that a file
damaged after it was written (bit flips on a disk or in a copy) is refused instead of silently loaded.

The digest is SHA-256 over the content's structure in order: every key and value, a tensor as its dtype,
shape and raw bytes, a number or string as its repr. It is stored under ``checksum`` beside the content;
files without one (written before checksums) load as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

CHECKSUM_KEY = "checksum"


class ChecksumMismatchError(ValueError):
    """The content read from a file is not the content its checksum was computed from."""


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:  # str, int, float (repr round-trips exactly), bool, None, torch.Size, ...
        text = repr(value)
        digest.update(f"{type(value).__name__}{len(text)}:{text};".encode())


def content_checksum(content: Mapping) -> str:
    """The SHA-256 hex digest of `content` (its checksum entry left out)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in content.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def with_checksum(content: Mapping) -> dict:
    """`content` plus its checksum entry: what a checkpoint file holds."""
    return {**{k: v for k, v in content.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: content_checksum(content)}


def verify_checksum(content) -> bool:
    """Raise ChecksumMismatchError when `content` holds a checksum that its content does not match; True when
    it was verified, False when it holds none (a file written before checksums, or not a checkpoint)."""
    if not isinstance(content, Mapping) or CHECKSUM_KEY not in content:
        return False
    if content_checksum(content) != content[CHECKSUM_KEY]:
        raise ChecksumMismatchError("its content does not match the checksum written with it")
    return True

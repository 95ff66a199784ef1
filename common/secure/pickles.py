"""Pickle checkpoints, recognised by name or by their first bytes, and refused with one error.

Why refuse them: unpickling calls whatever functions the file names (`os.system` as readily as
`torch._utils._rebuild_tensor`), so loading one runs its author's code. Safetensors is a JSON
header and raw tensor bytes: nothing in it can execute. Every loader of weights in `common`
(encrypted folders here, Hugging Face folders in `common.llm.checkpoint`) asks this module, so
the list of suffixes and the error a caller catches are the same everywhere: `UnsafeFormat`.
"""

from __future__ import annotations

import contextlib
import io
import zipfile

from common.secure.errors import UnsafeFormat

# what PyTorch, Lightning, pickle and joblib users name pickle files (pytorch_model.bin, model.pt, last.ckpt)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")
HEAD_BYTES = 64  # enough of a file's start to tell a pickle or a zip from safetensors

WHY = (
    "unpickling runs code named inside the file, so loading it would run whatever its author wrote; "
    "convert it to safetensors (safetensors.torch.save_file) in a sandbox you trust, then load that"
)


def is_pickle(head: bytes) -> bool:
    """Whether bytes starting a file are pickle data: protocol 2 to 5 (PROTO, 0x80, then the protocol
    number: what torch.save's legacy format and pickle.dumps write), or a zip, as torch.save writes
    (a zip holding data.pkl, or one too short to read: a zip is never safetensors either)."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head[:4] == b"PK\x03\x04":
        with contextlib.suppress(zipfile.BadZipFile, ValueError):
            return any(n.endswith(".pkl") for n in zipfile.ZipFile(io.BytesIO(head)).namelist())
        return True
    return False


def refuse_pickle(name: str, head: bytes = b"") -> None:
    """Raise UnsafeFormat if `name` has a pickle suffix or `head` (the file's first bytes) is pickle data."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeFormat(f"{name} is a pickle checkpoint by its name: {WHY}")
    if is_pickle(head):
        raise UnsafeFormat(f"{name} holds pickle data (or is a zip, as torch.save writes them): {WHY}")

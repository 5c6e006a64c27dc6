"""Compact blobs for the feature store: named numpy arrays packed into one zlib'd byte string.

A blob is `MAGIC + u32 header length + JSON header + raw array bytes`, compressed with zlib
using a preset dictionary (ZDICT). The header lists each array's name, dtype and shape, in
order. Arrays are small (a latent's examples, histogram, logit table, neighbours), so the
header would be a quarter of a card's bytes; the preset dictionary holds the usual header
text, so it costs a few bytes instead. One blob per latent keeps a card to one SQLite row
read, decoded in well under a millisecond.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Mapping

import numpy as np

from workbench.errors import CorruptFileError

MAGIC = b"WBA1"
# Header text that recurs in every card blob (names, dtypes, punctuation): zlib's preset
# dictionary. Changing it changes the blob format (bump schema.SCHEMA_VERSION).
_KNOWN_NAMES = ("ex_kind", "ex_interval", "ex_row", "ex_start", "ex_length", "ex_peak", "ex_value", "ex_acts",
                "hist_pos", "hist_neg", "logit_top_ids", "logit_top", "logit_bottom_ids", "logit_bottom",
                "nb_decoder_ids", "nb_decoder_cos", "nb_cofire_ids", "nb_cofire_jaccard", "tokens", "doc", "pos",
                "edges", "xy")
ZDICT = ("".join(f'["{n}","uint8",[12]],["{n}","uint16",[24]],["{n}","float16",[24,24]],["{n}","float32",[24]],'
                 f'["{n}","int32",[48]],' for n in _KNOWN_NAMES)).encode()

_ALLOWED_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float16", "float32", "float64", "bool"}


def pack_arrays(arrays: Mapping[str, np.ndarray], level: int = 6) -> bytes:
    """Pack named arrays (any shapes, the dtypes above) into one compressed blob."""
    header = []
    payload = []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.name
        if dtype not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {dtype}; expected one of {sorted(_ALLOWED_DTYPES)}")
        header.append([name, dtype, list(array.shape)])
        payload.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    head = json.dumps(header, separators=(",", ":")).encode()
    raw = MAGIC + struct.pack("<I", len(head)) + head + b"".join(payload)
    compressor = zlib.compressobj(level, zdict=ZDICT)
    return compressor.compress(raw) + compressor.flush()


def unpack_arrays(blob: bytes, what: str = "blob") -> dict[str, np.ndarray]:
    """Inverse of `pack_arrays`; raises CorruptFileError (naming `what`) on a damaged blob."""
    try:
        decompressor = zlib.decompressobj(zdict=ZDICT)
        raw = decompressor.decompress(blob) + decompressor.flush()
    except (zlib.error, TypeError) as error:
        raise CorruptFileError(f"{what} is not a valid compressed array blob ({error})") from None
    if raw[:4] != MAGIC:
        raise CorruptFileError(f"{what} does not start with the array-blob marker {MAGIC!r}")
    (length,) = struct.unpack("<I", raw[4:8])
    header = json.loads(raw[8:8 + length])
    offset = 8 + length
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape in header:
        dt = np.dtype(dtype).newbyteorder("<")
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dt.itemsize
        if offset + nbytes > len(raw):
            raise CorruptFileError(f"{what} is truncated (array {name!r})")
        out[name] = np.frombuffer(raw, dtype=dt, count=count, offset=offset).reshape(shape).astype(dtype, copy=False)
        offset += nbytes
    return out

"""Packing low-bit integer codes into bytes, and unpacking them again.

A 4-bit code needs half a byte, but numpy's smallest integer type holds eight bits: a "4-bit model"
stored as int8 arrays is no smaller than an 8-bit one. Real int4/int2 storage packs several codes
into each byte (Eq. 78 of docs/equations.md). ``pack`` and ``unpack`` do this for any width from 1 to 8
bits, exactly, with one layout:

    the codes form one bit stream, ``bits`` bits per code, code i occupying stream bits
    [i*bits, (i+1)*bits), each code's least significant bit first; stream bit k is bit (k mod 8)
    of byte k // 8, counting from the least significant bit (little-endian bit order, numpy's
    ``bitorder="little"``). The last byte is padded with zero bits.

So at 4 bits byte j holds code 2j in its low nibble and code 2j+1 in its high nibble; at 2 bits code
4j sits in bits 0-1 of byte j; at 3, 5, 6 and 7 bits a code may straddle two bytes. n codes take
ceil(n * bits / 8) bytes. Signed codes are stored as two's complement in ``bits`` bits (-1 at 4 bits
is 0b1111); ``unpack(..., signed=True)`` sign-extends them again.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from qlearn._checks import check_bool, check_int

__all__ = ["BITS_MIN", "BITS_MAX", "code_limits", "packed_size", "pack", "unpack"]

BITS_MIN, BITS_MAX = 1, 8  # a code fits in one byte


def _check_pack_bits(bits: Any) -> int:
    return check_int(bits, "bits", minimum=BITS_MIN, maximum=BITS_MAX)  # type: ignore[return-value]


def code_limits(bits: int, *, signed: bool) -> tuple[int, int]:
    """[lo, hi] of a ``bits``-bit code: [0, 2^bits - 1] unsigned, [-2^(bits-1), 2^(bits-1) - 1] signed."""
    bits = _check_pack_bits(bits)
    if check_bool(signed, "signed"):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take when packed: ceil(count * bits / 8)."""
    count = check_int(count, "count", minimum=0)  # type: ignore[assignment]
    return (count * _check_pack_bits(bits) + 7) // 8


def _codes_array(codes: Any) -> np.ndarray:
    """``codes`` as a flat int64 array; a list of Python ints is accepted, floats and bools are not."""
    if isinstance(codes, (list, tuple)):
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, (bool, np.bool_)) for c in codes):
            raise TypeError("codes must be integers (a list of ints or an integer numpy array)")
        return np.asarray(codes, dtype=np.int64).reshape(-1)
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"codes must be an integer numpy array (or a list of ints), got {type(codes).__name__}")
    if codes.dtype == bool or not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(
            f"codes must be an integer array (int8, uint8, int32 ...), got dtype {codes.dtype}; "
            "quantize real values to integer codes first (qlearn.quantize)"
        )
    return codes.astype(np.int64).reshape(-1)  # C order: the codes are packed as codes.ravel()


def pack(codes: Any, bits: int, *, signed: bool | None = None) -> np.ndarray:
    """Pack integer codes of ``bits`` bits (1..8) into a 1-D uint8 array of ceil(n bits / 8) bytes.

    codes  : integer array of any shape (packed in C order, ``codes.ravel()``) or a list of ints.
    signed : True: codes in [-2^(bits-1), 2^(bits-1) - 1], stored as two's complement in ``bits``
             bits; False: codes in [0, 2^bits - 1]; None (default): signed if any code is negative.
    The layout (little-endian bit order, zero padding) is in the module docstring. A code outside
    its range is a ValueError: it would not survive the round trip through ``unpack``.
    """
    bits = _check_pack_bits(bits)
    arr = _codes_array(codes)
    if signed is None:
        signed = bool(arr.size and arr.min() < 0)
    lo, hi = code_limits(bits, signed=check_bool(signed, "signed"))
    if arr.size and (arr.min() < lo or arr.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise ValueError(
            f"codes must lie in [{lo}, {hi}] for {kind} {bits}-bit codes, found {arr.min()}..{arr.max()}"
            + ("" if signed else "; pass signed=True for two's complement codes")
        )
    raw = (arr & ((1 << bits) - 1)).astype(np.uint8)  # two's complement in `bits` bits: -1 -> 2^bits - 1
    # (n, 8) bits of each code, least significant first; keep the low `bits` of them as one stream
    stream = np.unpackbits(raw[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
    return np.packbits(stream, bitorder="little")  # zero-padded to whole bytes


def unpack(packed: Any, bits: int, count: int, *, signed: bool) -> np.ndarray:
    """The ``count`` codes of ``bits`` bits stored in ``packed`` (the inverse of ``pack``).

    packed : 1-D uint8 array (or ``bytes``) of exactly ceil(count * bits / 8) bytes.
    signed : True: sign-extend two's complement codes, int8 result in [-2^(bits-1), 2^(bits-1) - 1];
             False: uint8 result in [0, 2^bits - 1].
    Returns a 1-D array of ``count`` codes. A byte count that does not match ``count`` and ``bits``,
    or padding bits that are not zero (the data was packed with another width or count), is a ValueError.
    """
    bits = _check_pack_bits(bits)
    count = check_int(count, "count", minimum=0)  # type: ignore[assignment]
    signed = check_bool(signed, "signed")
    if isinstance(packed, (bytes, bytearray)):
        packed = np.frombuffer(bytes(packed), dtype=np.uint8)
    if not isinstance(packed, np.ndarray):
        raise TypeError(f"packed must be a uint8 numpy array (from pack) or bytes, got {type(packed).__name__}")
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must have dtype uint8 (the bytes pack returns), got dtype {packed.dtype}")
    if packed.ndim != 1:
        raise ValueError(f"packed must be a 1-D array of bytes, got shape {packed.shape}")
    need = packed_size(count, bits)
    if packed.size != need:
        raise ValueError(
            f"count={count} codes of {bits} bits take {need} bytes, but packed holds {packed.size}: "
            "wrong count or wrong bits"
        )
    stream = np.unpackbits(packed, bitorder="little")
    if stream[count * bits:].any():
        raise ValueError(f"the padding bits after code {count} are not zero: wrong count or wrong bits")
    planes = stream[: count * bits].reshape(count, bits).astype(np.int16)  # (count, bits), LSB first
    values = planes @ (1 << np.arange(bits, dtype=np.int16))  # (count,) in [0, 2^bits - 1]
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)

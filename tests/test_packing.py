"""qlearn.packing against an independent bit-string oracle, for every width 1-8 (property tests)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qlearn.packing import code_limits, pack, packed_size, unpack

HYP = settings(max_examples=150, deadline=None, derandomize=True)


def oracle_pack(codes, bits):
    """Pure Python: each code as a ``bits``-character two's complement string, LSB first, concatenated,
    zero-padded to whole bytes; each 8-character chunk read LSB first."""
    stream = "".join(format(c & ((1 << bits) - 1), f"0{bits}b")[::-1] for c in codes)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i:i + 8][::-1], 2) for i in range(0, len(stream), 8)]


def oracle_unpack(data, bits, count, signed):
    stream = "".join(format(b, "08b")[::-1] for b in data)
    out = []
    for i in range(count):
        v = int(stream[i * bits:(i + 1) * bits][::-1], 2)
        if signed and v >= 1 << (bits - 1):
            v -= 1 << bits
        out.append(v)
    return out


@st.composite
def codes_of_a_width(draw):
    bits = draw(st.integers(1, 8))
    signed = draw(st.booleans())
    lo, hi = code_limits(bits, signed=signed)
    codes = draw(st.lists(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi])), max_size=41))
    return bits, signed, codes


@HYP
@given(codes_of_a_width())
def test_pack_matches_the_bit_string_oracle_and_round_trips(case):
    bits, signed, codes = case
    dtype = np.int16 if signed else np.uint16
    packed = pack(np.array(codes, dtype=dtype), bits, signed=signed)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.tolist() == oracle_pack(codes, bits)
    assert packed.size == packed_size(len(codes), bits) == -(-len(codes) * bits // 8)
    back = unpack(packed, bits, len(codes), signed=signed)
    assert back.dtype == (np.int8 if signed else np.uint8)
    assert back.tolist() == codes == oracle_unpack(packed.tolist(), bits, len(codes), signed)


@HYP
@given(st.sampled_from([1, 2, 4, 8, 3, 5, 6, 7]), st.binary(max_size=24), st.booleans())
def test_unpack_reads_any_bytes_like_the_oracle(bits, data, signed):
    count = len(data) * 8 // bits
    assume(count * bits == len(data) * 8)  # no padding bits: any bytes are then a valid stream
    got = unpack(np.frombuffer(data, np.uint8), bits, count, signed=signed)
    assert got.tolist() == oracle_unpack(list(data), bits, count, signed)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_every_code_of_every_width_round_trips_at_every_odd_length(bits, signed):
    lo, hi = code_limits(bits, signed=signed)
    every = np.arange(lo, hi + 1)
    for n in (1, 2, 3, 5, 7, 9, 11, len(every), len(every) + 1):
        codes = np.resize(every, n)
        assert unpack(pack(codes, bits, signed=signed), bits, n, signed=signed).tolist() == codes.tolist()


def test_documented_layouts():
    # 4 bits: code 2j in the low nibble of byte j, code 2j+1 in the high nibble
    assert pack(np.array([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    # signed: two's complement in 4 bits, -1 -> 0b1111, -8 -> 0b1000
    assert pack(np.array([-1, -8]), 4).tolist() == [0x8F]
    # 2 bits: code 4j in bits 0-1
    assert pack(np.array([3, 0, 1, 2]), 2).tolist() == [0b10010011]
    # 3 bits straddle bytes: 8 codes 0..7 make 24 bits
    assert pack(np.arange(8), 3).tolist() == oracle_pack(list(range(8)), 3) and pack(np.arange(8), 3).size == 3
    # 8 bits is the identity on uint8 and two's complement on int8
    assert pack(np.array([0, 255], np.uint8), 8).tolist() == [0, 255]
    assert pack(np.array([-128, -1], np.int8), 8).tolist() == [128, 255]
    # 1 bit: 8 flags per byte
    assert pack(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1).tolist() == [0x81, 0x01]


def test_signed_is_inferred_from_negative_codes_and_shapes_are_flattened():
    assert pack(np.array([[-1, 2], [3, -4]]), 4).tolist() == pack(np.array([-1, 2, 3, -4]), 4, signed=True).tolist()
    assert pack([7, 1], 4).tolist() == [0x17]
    assert pack(np.array([], np.int8), 4).size == 0
    assert unpack(np.zeros(0, np.uint8), 4, 0, signed=True).size == 0
    assert unpack(bytes([0x21, 0x03]), 4, 3, signed=False).tolist() == [1, 2, 3]


@pytest.mark.parametrize("bits,codes,signed,match", [
    (4, [16], None, r"\[0, 15\]"),
    (4, [-9], None, r"\[-8, 7\]"),
    (4, [8], True, r"\[-8, 7\]"),
    (4, [-1, 15], None, r"\[-8, 7\]"),  # a mix of negatives and large unsigned codes: no single reading
    (4, [-1], False, "signed=True"),
    (1, [2], None, r"\[0, 1\]"),
])
def test_codes_out_of_range_are_refused(bits, codes, signed, match):
    with pytest.raises(ValueError, match=match):
        pack(np.array(codes), bits, signed=signed)


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="codes must be an integer array"):
        pack(np.array([1.0, 2.0]), 4)
    with pytest.raises(TypeError, match="codes must be an integer array"):
        pack(np.array([True, False]), 1)
    with pytest.raises(TypeError, match="codes must be integers"):
        pack([1, 2.5], 4)
    with pytest.raises(TypeError, match="codes must be an integer numpy array"):
        pack("12", 4)
    for bad in (0, 9, 16):
        with pytest.raises(ValueError, match="bits must be an integer between 1 and 8"):
            pack(np.array([0]), bad)
    with pytest.raises(TypeError, match="bits"):
        pack(np.array([0]), 4.0)
    with pytest.raises(TypeError, match="signed"):
        pack(np.array([0]), 4, signed="yes")
    packed = pack(np.arange(5), 4)  # 3 bytes
    with pytest.raises(ValueError, match="count=7 codes of 4 bits take 4 bytes, but packed holds 3"):
        unpack(packed, 4, 7, signed=False)
    with pytest.raises(ValueError, match="wrong count"):
        unpack(packed, 4, 3, signed=False)
    with pytest.raises(ValueError, match="padding bits"):
        unpack(pack(np.arange(6), 4), 4, 5, signed=False)  # the 6th code lands in the padding
    with pytest.raises(ValueError, match="count"):
        unpack(packed, 4, -1, signed=False)
    with pytest.raises(TypeError, match="count"):
        unpack(packed, 4, 5.0, signed=False)
    with pytest.raises(TypeError, match="dtype uint8"):
        unpack(packed.astype(np.int8), 4, 5, signed=False)
    with pytest.raises(TypeError, match="packed must be"):
        unpack([1, 2, 3], 4, 5, signed=False)
    with pytest.raises(ValueError, match="1-D"):
        unpack(packed.reshape(3, 1), 4, 5, signed=False)
    with pytest.raises(TypeError, match="signed"):
        unpack(packed, 4, 5, signed=None)

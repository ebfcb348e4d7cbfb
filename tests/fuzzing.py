"""What the fuzz tests share (data readers, checkpoints, ONNX exports): Hypothesis settings for a
repeatable run of slow examples, and damaged copies of a file's bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz_settings(max_examples: int) -> settings:
    """``max_examples`` examples, the same every run (derandomized, no example database), each
    allowed as long as it takes, on inputs as large as a checkpoint."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def flipped(data: bytes, position: int, bit: int) -> bytes:
    """``data`` with bit ``bit`` of byte ``position`` flipped."""
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :]


def damaged_inputs(data: bytes):
    """``("flip", bytes)`` with one bit flipped, or ``("truncation", bytes)`` cut short."""
    return st.one_of(
        st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)).map(
            lambda flip: ("flip", flipped(data, *flip))
        ),
        st.integers(0, len(data) - 1).map(lambda cut: ("truncation", data[:cut])),
    )

"""Fshift: the fbank frame shift times C; the 25 ms window stays (the paper's authors' code)."""


def frame_shift(base_shift_ms: float, C: int) -> float:
    return base_shift_ms * C


def target_length(base_target: int, C: int) -> int:
    return base_target // C

"""`--ratios 0.8,0.1,0.1` (and download's `--split`): train, validation and test, in that order.

Read where the options are checked (config) and where the split is made (metadata), so a wrong
value is one line before a download starts rather than after it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowdc.core.errors import FlowDCError
from flowdc.core.layout import SPLIT_NAMES

_EXAMPLE = "such as 0.8,0.1,0.1 (train, validation, test) or 0.9,0.1 (train, test)"


def parse_ratios(value: str | Sequence[float]) -> dict[str, float]:
    """Split name -> share of the samples, summing to 1. Two values are train and test; numbers
    that sum to 100 are percentages."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            raise FlowDCError(
                f"split ratios '{value}' are not numbers; give them {_EXAMPLE}"
            ) from None
    else:
        numbers = [float(number) for number in value]
    if len(numbers) not in (2, 3):
        raise FlowDCError(
            f"split ratios '{value}' are {len(numbers)} numbers; give 2 or 3, {_EXAMPLE}"
        )
    if any(not number >= 0 for number in numbers) or not numbers[0] > 0:
        raise FlowDCError(
            f"split ratios '{value}': each must be 0 or more and train's above 0; give them "
            f"{_EXAMPLE}"
        )
    total = sum(numbers)
    if abs(total - 100) < 1e-6:
        numbers = [number / 100 for number in numbers]
    elif abs(total - 1) > 1e-6:
        raise FlowDCError(
            f"split ratios '{value}' sum to {total:g}, not 1 (or 100); give them {_EXAMPLE}"
        )
    names = SPLIT_NAMES if len(numbers) == 3 else (SPLIT_NAMES[0], SPLIT_NAMES[2])
    return dict(zip(names, numbers, strict=True))

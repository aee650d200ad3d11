"""Per-sequence rows of a device tensor (token counts, step counters), handed out by slot.

A sequence that needs device state gets a slot when it is added and gives it back when it
is released; the step then gathers the rows of its batch by slot index. The table grows by
doubling and never shrinks, so slots stay valid across growth.
"""

from __future__ import annotations

import torch

__all__ = ["SlotTable"]


class SlotTable:
    """A ``[capacity, width]`` device tensor whose rows are owned by sequences."""

    def __init__(self, width: int, dtype: torch.dtype, device: torch.device) -> None:
        self.tensor = torch.zeros((0, width), dtype=dtype, device=device)
        self._free: list[int] = []

    @property
    def num_used(self) -> int:
        return self.tensor.shape[0] - len(self._free)

    def alloc(self) -> int:
        """A zeroed row's slot, growing the table when every row is taken."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.tensor[slot].zero_()
        return slot

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def _grow(self) -> None:
        capacity = self.tensor.shape[0]
        new_capacity = max(8, 2 * capacity)
        grown = self.tensor.new_zeros((new_capacity, self.tensor.shape[1]))
        grown[:capacity] = self.tensor
        self.tensor = grown
        # Hand out low slots first (pop() takes from the end).
        self._free.extend(range(new_capacity - 1, capacity - 1, -1))

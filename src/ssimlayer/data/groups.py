"""Hand out a loader's batches ``k`` at a time, for training steps that run several optimiser steps.

Lightning's loop costs about a millisecond of host time per batch it fetches (hooks, progress
tracking, logging bookkeeping), as much as a whole GPU step of the paper's models at batch 32.
:class:`BatchGroups` lets one Lightning iteration carry ``k`` batches, so that the loop's cost is
paid once per ``k`` optimiser steps (``ClassifierModule(steps_per_execution=k)`` runs them), as
Keras's ``steps_per_execution`` does. The batches themselves, their order and their number are
those of the wrapped loader.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["BatchGroups"]


class BatchGroups:
    """Lists of ``k`` consecutive batches of ``loader`` (the last list may be shorter).

    The wrapped loader's ``sampler`` is exposed for Lightning's ``set_epoch`` call, and its
    ``state_dict``/``load_state_dict`` (if any) are passed through, so a resumable loader stays
    resumable: its position counts batches, and a group is handed out whole.

    Args:
        loader: any iterable of batches with a length.
        k: batches per group, ``>= 1``.

    Examples:
        >>> [len(g) for g in BatchGroups(range(10), 4)]
        [4, 4, 2]
        >>> len(BatchGroups(range(10), 4))
        3
    """

    batch_sampler = None  # Lightning inspects ``sampler``/``batch_sampler`` as on a DataLoader

    def __init__(self, loader: Iterable[Any], k: int) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"BatchGroups: k (batches per group) must be an int >= 1, got {k!r}")
        self.loader, self.k = loader, k

    @property
    def sampler(self) -> Any:
        return getattr(self.loader, "sampler", None)

    def __len__(self) -> int:
        return -(-len(self.loader) // self.k)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Any]]:
        batches = iter(self.loader)
        while group := list(itertools.islice(batches, self.k)):
            yield group

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state)

"""Which exported graph serves a batch, for every runtime: a static graph of exactly that size, else the
dynamic one (whose TensorRT profile must cover the batch)."""
from __future__ import annotations

from ..errors import InvalidInput


def select_graph(available: list[tuple[bool, int | None]], guided: bool, batch: int,
                 max_batch: int | None = None) -> tuple[bool, int | None]:
    """The (guided, static batch or None) key of the graph for ``batch``; ``max_batch``: the dynamic graph's
    largest batch (a TensorRT profile's), None where it has none."""
    if (guided, batch) in available:
        return guided, batch
    if (guided, None) in available:
        if max_batch is not None and batch > max_batch:
            raise InvalidInput(f"batch {batch} is above the dynamic profile's maximum {max_batch}; rebuild the plan "
                               "with a larger --max-batch")
        return guided, None
    have = sorted(b for g, b in available if g == guided and b is not None)
    raise InvalidInput(f"no {'guided' if guided else 'unguided'} graph for batch {batch}: the exported graphs have "
                       f"static batch sizes {have}; export with a dynamic batch or this size")

"""The Verlet neighbour list, re-exported from :mod:`clebsch.graph.verlet` (neighbour lists live in ``graph``)."""

from ..graph.verlet import VerletList

__all__ = ["VerletList"]

"""Typed tensor-product paths: which input irreps feed which output irrep, and how."""

from dataclasses import dataclass

__all__ = ["Path", "MODES"]

#: Connection modes. ``u``, ``v``, ``w`` index the multiplicities of the first
#: input, the second input and the output.
MODES = ("uvw", "uvu", "uvv", "uuu", "uvuv")


@dataclass(frozen=True)
class Path:
    """One path of a :class:`~clebsch.nn.TensorProduct`.

    Parameters
    ----------
    i_in1, i_in2, i_out : int
        Indices into ``irreps_in1``, ``irreps_in2`` and ``irreps_out``.
    mode : str
        How multiplicities connect:

        * ``"uvw"``: fully connected, weight ``w[u, v, w]`` (always weighted);
        * ``"uvu"``: channel-wise, output copy ``u`` from input-1 copy ``u``,
          summed over ``v``; weight ``w[u, v]`` (the NequIP/MACE convolution);
        * ``"uvv"``: the mirror image of ``uvu``; weight ``w[u, v]``;
        * ``"uuu"``: element-wise, needs equal multiplicities; weight ``w[u]``;
        * ``"uvuv"``: every pair ``(u, v)`` gives its own output copy; weight ``w[u, v]``.
    has_weight : bool
        Whether the path carries learnable (or externally given) weights.
    path_weight : float
        Extra constant factor, applied on top of the normalisation (multiplies
        the squared normalisation, as in e3nn).

    Examples
    --------
    >>> Path(0, 1, 2, mode="uvu")
    Path(i_in1=0, i_in2=1, i_out=2, mode='uvu', has_weight=True, path_weight=1.0)
    >>> Path(0, 0, 0, mode="uvw", has_weight=False)
    Traceback (most recent call last):
    ...
    ValueError: Path(0, 0 -> 0, 'uvw'): mode 'uvw' needs has_weight=True
    """

    i_in1: int
    i_in2: int
    i_out: int
    mode: str = "uvw"
    has_weight: bool = True
    path_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("i_in1", "i_in2", "i_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.short()}: {name} must be an int >= 0, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"{self.short()}: unknown mode {self.mode!r}, expected one of {MODES}")
        if self.mode == "uvw" and not self.has_weight:
            raise ValueError(f"{self.short()}: mode 'uvw' needs has_weight=True")
        object.__setattr__(self, "has_weight", bool(self.has_weight))
        object.__setattr__(self, "path_weight", float(self.path_weight))

    def short(self) -> str:
        """Compact description used in error messages."""
        return f"Path({self.i_in1}, {self.i_in2} -> {self.i_out}, {self.mode!r})"

    def weight_shape(self, mul1: int, mul2: int, mul_out: int) -> tuple:
        """Shape of this path's weights given the three multiplicities.

        Examples
        --------
        >>> Path(0, 0, 0, "uvw").weight_shape(4, 2, 3), Path(0, 0, 0, "uvu").weight_shape(4, 2, 4)
        ((4, 2, 3), (4, 2))
        """
        return {
            "uvw": (mul1, mul2, mul_out),
            "uvu": (mul1, mul2),
            "uvv": (mul1, mul2),
            "uuu": (mul1,),
            "uvuv": (mul1, mul2),
        }[self.mode]

    def num_elements(self, mul1: int, mul2: int) -> int:
        """How many products are summed into one output component (for path normalisation)."""
        return {"uvw": mul1 * mul2, "uvu": mul2, "uvv": mul1, "uuu": 1, "uvuv": 1}[self.mode]

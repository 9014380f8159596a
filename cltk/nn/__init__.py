"""Modules built on cltk's ops."""
from cltk.nn.modulated import ModulatedConv2d, ModulatedLinear, mod_shape_for

__all__ = ["ModulatedConv2d", "ModulatedLinear", "mod_shape_for"]

"""Semantic segmentation of road scenes with U-Nets, Lightning and Hydra."""

from segment.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"

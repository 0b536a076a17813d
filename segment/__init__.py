"""Semantic segmentation of road scenes with U-Nets, Lightning and Hydra."""

from segment.config import register_resolvers
from segment.schema import register_schemas

register_resolvers()
register_schemas()

__version__ = "0.1.0"

"""Semantic segmentation of road scenes with U-Nets, Lightning and Hydra."""

from segment.config import register

register()  # the config tree's resolvers and top-level schema

__version__ = "0.1.0"

"""The prepared GPU run: pack what a bare GPU machine lacks, then run one command there.

``python -m segment.device pack`` builds the git-ignored ``.device_pack/`` (wheels, compact
CamVid, the VGG16 encoder weights) that travels with the working tree;
``bash benchmarks/device_study.sh`` runs the throughput benchmark, the study and a quality
run there (docs/gpu.md).
"""

from segment.device.pack import PackReport, pack

__all__ = ["PackReport", "pack"]

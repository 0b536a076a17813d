"""The machine a run trains on: its measured CPU precision, and the prepared GPU run.

:mod:`segment.device.precision` measures whether bf16 or fp32 trains faster on this host
(``trainer.precision=auto``). ``python -m segment.device pack`` builds the git-ignored
``.device_pack/`` (wheels, compact CamVid, the VGG16 encoder weights) that travels with the working
tree; ``bash benchmarks/device_study.sh`` runs the throughput benchmark, the study and a quality run
there (docs/gpu.md).
"""

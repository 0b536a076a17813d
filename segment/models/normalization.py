"""Input normalisation constants shared by the nets, the weights resolver and the HED conversion."""

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

# RGB, [0, 1] units: what torchvision's and smp's ImageNet encoders were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#!/usr/bin/env python
"""Convert torchvision ResNet weights to Detectron2's ResNet names.

    python tools/convert-torchvision-to-d2.py resnet101-63fe2227.pth R-101.pkl

Renames: stem layers get a "stem." prefix, layer1..layer4 become res2..res5, bn1..bn3 become
conv1..conv3.norm, downsample.0 / downsample.1 become shortcut / shortcut.norm. The classifier
becomes "stem.fc.*", which no Detectron2 model has, so loading skips it.
"""
import re
import sys

from checkpoint_conversion import run


def convert_name(name):
    if not name.startswith("layer"):
        name = "stem." + name
    name = re.sub(r"^layer([1-4])", lambda m: f"res{int(m.group(1)) + 1}", name)
    name = re.sub(r"\bbn([1-3])\b", r"conv\1.norm", name)
    name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return name


def convert(state_dict):
    converted = {}
    for name, tensor in state_dict.items():
        new_name = convert_name(name)
        print(f"{name} -> {new_name}")
        converted[new_name] = tensor.detach().numpy()
    return converted


if __name__ == "__main__":
    sys.exit(run(sys.argv, convert, "torchvision", __doc__))

"""The CNN of the whole-image baseline and of the cascade's second stage: one logit per image.

Input is grey, ``[B, 1, H, W]`` in [0, 1]; the model subtracts the TRAINING set's mean pixel and
divides by its std (the paper subtracts the mean pixel), held as buffers so a checkpoint
carries them and inference cannot forget them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from limbscan.config import ClassifierConfig
from limbscan.errors import LimbscanError
from limbscan.models.backbones import create_backbone, get_spec


class Classifier(nn.Module):
    """backbone -> pooled features -> dropout -> Linear(1); ``forward`` returns logits ``[B]``."""

    # Channels-last on every device: oneDNN's fast path on a CPU (docs/training.md, "Models and training";
    # benchmarks/train_speed.py measures it against contiguous), tensor cores' on CUDA.
    # :func:`~limbscan.models.backbones.set_memory_format` changes it.
    memory_format = torch.channels_last

    def __init__(
        self,
        backbone: str,
        pretrained: bool = True,
        dropout: float = 0.2,
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
    ):
        super().__init__()
        if not pixel_std > 0:
            raise LimbscanError(f"classifier: pixel_std must be > 0, got {pixel_std}")
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained, features_only=False).to(memory_format=self.memory_format)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(get_spec(backbone).num_features, 1)
        self.register_buffer("pixel_mean", torch.tensor(float(pixel_mean)))
        self.register_buffer("pixel_std", torch.tensor(float(pixel_std)))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"classifier takes [B, 1, H, W] grey images, got shape {tuple(x.shape)}")
        x = ((x - self.pixel_mean) / self.pixel_std).contiguous(memory_format=self.memory_format)
        return self.head(self.dropout(self.backbone(x))).squeeze(1)

    def param_groups(self, lr_backbone: float, lr_heads: float, weight_decay: float) -> list[dict]:
        """The paper's two learning rates; no weight decay on biases and norm scales (timm's rule)."""
        return _param_groups({"backbone": (self.backbone, lr_backbone), "head": (self.head, lr_heads)}, weight_decay)


def build_classifier(cfg: ClassifierConfig, pixel_mean: float, pixel_std: float) -> Classifier:
    return Classifier(cfg.backbone, cfg.pretrained, cfg.dropout, pixel_mean, pixel_std)


def _param_groups(parts: dict[str, tuple[nn.Module, float]], weight_decay: float) -> list[dict]:
    """One group per (part, decayed or not) holding trainable parameters; each says its ``name``."""
    groups = []
    for name, (module, lr) in parts.items():
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
        for suffix, params, wd in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"name": name + suffix, "params": params, "lr": lr, "weight_decay": wd})
    return groups

"""A toy model (one weight, no data) in detector.train_loop's Trainer: what test_train_loop.py and
test_hooks.py drive hooks through."""

from __future__ import annotations

import torch
from torch import nn

from detector.train_loop import Trainer


class ToyBatch:
    images = image_sizes = gt_boxes = gt_classes = gt_crowd = None

    def to(self, device, non_blocking=False):
        return self

    def __len__(self):
        return 2


class ToyModel(nn.Module):
    """loss = w^2 (w starts at 1): the RetinaNet training outputs the trainer reads."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, *batch):
        loss = self.w ** 2
        return {"loss": loss, "loss_cls": loss, "loss_box": loss * 0, "num_pos": 4, "num_anchors": 10}


def toy_trainer(hooks: list, grad_clip: float = 0.0) -> Trainer:
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    trainer = Trainer(model, optimizer, scheduler, iter(ToyBatch, None), torch.device("cpu"), grad_clip=grad_clip)
    trainer.register_hooks(hooks)
    return trainer

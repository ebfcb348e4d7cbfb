"""model.batchnorm: frozen BatchNorm is eval-mode BatchNorm with nothing to train; SyncBatchNorm
only when several processes train together."""

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detlab.engine.distributed import Context
from detlab.models.backbones import build_feature_extractor, freeze_batchnorm, sync_batchnorm
from detlab.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn
from detlab.models.yolo import YOLOConfig, build_yolo


def with_learned_statistics(module: nn.Module) -> nn.Module:
    """BatchNorm layers with statistics and scales far from their initial 0/1, as after training."""
    generator = torch.Generator().manual_seed(1)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.rand(4, 3, 64, 64, generator=generator) * 3 + 0.5)
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.weight.uniform_(0.5, 1.5, generator=generator)
                layer.bias.uniform_(-0.3, 0.3, generator=generator)
    return module


@pytest.mark.parametrize("name", ["compact", "resnet18"])
def test_frozen_batchnorm_computes_eval_mode_batchnorm_in_training_too_and_trains_nothing(name):
    torch.manual_seed(0)
    extractor = with_learned_statistics(build_feature_extractor(name, width=8, fpn=True, fpn_channels=16))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = extractor.eval()(images)
        frozen = copy.deepcopy(extractor)
        freeze_batchnorm(frozen.body)
        got = frozen.train()(images)  # training mode: still the loaded statistics
    for level in expected:
        torch.testing.assert_close(got[level], expected[level])
    assert not any(isinstance(layer, nn.BatchNorm2d) for layer in frozen.body.modules())
    norms = [layer for layer in frozen.body.modules() if isinstance(layer, FrozenBatchNorm2d)]
    assert norms and not any(list(layer.parameters()) for layer in norms)
    # The names stay: a BatchNorm checkpoint loads into the frozen model (BatchNorm's step counter
    # is dropped), and a frozen one into a BatchNorm model, which then misses only that counter.
    frozen.load_state_dict(extractor.state_dict())
    missing, unexpected = copy.deepcopy(extractor).load_state_dict(frozen.state_dict(), strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)


BODIES_OF = {
    "faster_rcnn": lambda mode: build_faster_rcnn(FasterRCNNConfig(backbone="compact", backbone_width=8,
                                                                   batchnorm=mode), 2).backbone.body,
    "yolo": lambda mode: build_yolo(YOLOConfig(batchnorm=mode), 2).body,
}  # fmt: skip


@pytest.mark.parametrize("detector", sorted(BODIES_OF))
def test_model_batchnorm_frozen_freezes_the_body(detector):
    body = BODIES_OF[detector]("frozen")
    assert not any(isinstance(layer, nn.BatchNorm2d) for layer in body.modules())
    assert any(isinstance(layer, FrozenBatchNorm2d) for layer in body.modules())
    assert any(isinstance(layer, nn.BatchNorm2d) for layer in BODIES_OF[detector]("train").modules())


def test_sync_batchnorm_converts_only_when_several_processes_train():
    torch.manual_seed(0)
    model = build_faster_rcnn(FasterRCNNConfig(backbone="compact", backbone_width=8, batchnorm="sync"), 2)
    parameters, names = list(model.parameters()), list(model.state_dict())
    alone = Context(rank=0, world_size=1, device=torch.device("cuda", 0))
    assert not sync_batchnorm(model, alone.world_size, alone.device)
    assert not any(isinstance(layer, nn.SyncBatchNorm) for layer in model.modules())

    two_gpus = Context(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    assert sync_batchnorm(model, two_gpus.world_size, two_gpus.device)
    assert not any(type(layer) is nn.BatchNorm2d for layer in model.modules())
    assert any(isinstance(layer, nn.SyncBatchNorm) for layer in model.backbone.body.modules())
    # the optimiser's tensors and the checkpoint's names stay the same
    assert all(a is b for a, b in zip(parameters, model.parameters())) and list(model.state_dict()) == names

    per_process = build_faster_rcnn(FasterRCNNConfig(backbone="compact", backbone_width=8), 2)
    assert not sync_batchnorm(per_process, two_gpus.world_size, two_gpus.device)
    on_cpus = Context(rank=0, world_size=2, device=torch.device("cpu"))
    fresh = build_faster_rcnn(FasterRCNNConfig(backbone="compact", backbone_width=8, batchnorm="sync"), 2)
    with pytest.raises(ValueError, match="model.batchnorm=train"):
        sync_batchnorm(fresh, on_cpus.world_size, on_cpus.device)

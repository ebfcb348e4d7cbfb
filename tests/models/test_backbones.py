import urllib.error

import pytest
import torch
from torch import nn

from detlab.models.backbones import BODIES, MULTI_LEVEL, build_classifier_net, build_feature_extractor


@pytest.mark.parametrize("name", sorted(BODIES))
def test_output_shape_matches_out_channels_and_stride(name):
    torch.manual_seed(0)
    extractor = build_feature_extractor(name).eval()
    size = 64 if name != "alexnet" else 127  # AlexNet's 11x11/4 stem needs a bit more room
    with torch.no_grad():
        (output,) = extractor(torch.rand(1, 3, size, size)).values()
    assert output.shape[1] == extractor.out_channels
    # Each stride-2 stage floors the size, so the grid is within one cell of size / stride.
    assert abs(output.shape[2] - size / extractor.strides[0]) <= 1.5


def test_without_a_pyramid_only_the_layers_used_are_built():
    # C4 (stride 16) is what a single-map detector sees: C5 and torchvision's classifier are not built.
    resnet = build_feature_extractor("resnet18")
    names = {name.split(".")[1] for name, _ in resnet.named_parameters()}
    assert "layer3" in names and "layer4" not in names and "fc" not in names
    assert resnet.strides == [16.0] and resnet.out_channels == 256
    compact = build_feature_extractor("compact", width=8)
    assert len(compact.body.stages) == 2 and compact.strides == [16.0]
    with_fpn = build_feature_extractor("resnet18", fpn=True, fpn_channels=16)
    assert with_fpn.strides == [8.0, 16.0, 32.0] and "layer4" in {
        n.split(".")[1] for n, _ in with_fpn.named_parameters()
    }


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_levels_report_their_channels(name):
    extractor = build_feature_extractor(name, fpn=True, fpn_channels=8).eval()
    with torch.no_grad():
        levels = extractor.body(torch.rand(1, 3, 64, 64))
    assert [level.shape[1] for level in levels] == extractor.body.channels


def test_small_net_is_exactly_stride_16():
    extractor = build_feature_extractor("small").eval()
    with torch.no_grad():
        assert extractor(torch.rand(2, 3, 128, 96))["0"].shape == (2, 256, 8, 6)


def test_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = build_feature_extractor("resnet18")
    path = tmp_path / "weights.pt"
    torch.save(source.body.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_feature_extractor("resnet18", weights_path=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_full_torchvision_state_dict_loads_into_the_body(tmp_path, name):
    import torchvision

    full = getattr(torchvision.models, name)(weights=None)
    path = tmp_path / "full.pt"
    torch.save(full.state_dict(), path)
    loaded = build_feature_extractor(name, weights_path=path)
    key = "features.0.0.weight" if name == "mobilenet_v2" else "conv1.weight"
    assert torch.equal(loaded.body.state_dict()[key], full.state_dict()[key])


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_feature_extractor("small").body.state_dict(), path)
    with pytest.raises(ValueError, match="missing"):
        build_feature_extractor("resnet18", weights_path=path)
    with pytest.raises(FileNotFoundError):
        build_feature_extractor("small", weights_path=tmp_path / "absent.pt")


def test_pretrained_without_internet_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="backbone-weights"):
        build_feature_extractor("resnet18", pretrained=True)


def test_unknown_backbone_and_fpn_on_a_single_map():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_feature_extractor("resnet999")
    with pytest.raises(ValueError, match="FPN"):
        build_feature_extractor("vgg16", fpn=True)
    assert set(MULTI_LEVEL) < set(BODIES)


def test_classifier_net_small_shapes():
    # Valid convolutions: 128 -> 126 -> 63 -> 61 -> 30 -> 28 -> 14 -> 12 -> 6 -> 4.
    net = build_classifier_net("small", window_size=128, hidden_dim=32)
    assert net.grid == (4, 4) and net.stride == 16 and net.out_channels == 256
    net.features.eval(), net.hidden.eval()
    with torch.no_grad():
        assert net.hidden(net.features(torch.rand(3, 3, 128, 128))).shape == (3, 32)


def test_small_net_blocks_and_pool_options():
    net = build_classifier_net("small", window_size=64, num_blocks=4, pool="max", hidden_dim=8)
    assert net.stride == 8 and net.out_channels == 256
    with pytest.raises(ValueError, match="2 to 5 blocks"):
        build_classifier_net("small", window_size=64, num_blocks=6)
    with pytest.raises(ValueError, match="strided_blocks must be 0 or more"):
        build_classifier_net("small", window_size=64, num_blocks=4, strided_blocks=-1)
    # More strided blocks than blocks ending in a pool: all but the last block are strided.
    net = build_classifier_net("small", window_size=64, num_blocks=2, strided_blocks=2, hidden_dim=8)
    strides = [m.stride for m in net.features.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [(2, 2), (1, 1)] and net.stride == 2
    with pytest.raises(ValueError, match="pool"):
        build_classifier_net("small", window_size=64, pool="mean")
    with pytest.raises(ValueError, match="small"):
        build_classifier_net("alexnet", window_size=224, pool="max")


def test_classifier_net_alexnet_needs_224_window():
    with pytest.raises(ValueError, match="224"):
        build_classifier_net("alexnet", window_size=128)
    net = build_classifier_net("alexnet", window_size=224)
    assert net.grid == (6, 6) and net.hidden_dim == 4096


@pytest.mark.parametrize("method", ["yolo", "faster_rcnn"])
def test_a_channels_last_model_gets_gradients_in_its_parameters_layout(method):
    """What DDP's gradient buckets need (else it warns 'Grad strides do not match bucket view
    strides' on every 1 x 1 kernel): each 4-D parameter's gradient has the parameter's strides."""
    from detlab.engine.run import build_model, resolve_run_config

    overrides = ["model.channels_last=true", "model.backbone_width=8"]
    overrides += ["model.input_size=64"] if method == "yolo" else ["model.min_size=64", "model.max_size=64"]
    model = build_model(resolve_run_config(method, overrides=overrides), 2)
    kernels = [parameter for parameter in model.parameters() if parameter.dim() == 4]
    assert kernels and all(
        parameter.is_contiguous(memory_format=torch.channels_last) for parameter in kernels
    )
    assert any(parameter.shape[-2:] == (1, 1) for parameter in kernels)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    losses = model.train()([torch.rand(3, 64, 64)], [target])
    sum(losses.values()).backward()
    for parameter in kernels:
        if parameter.grad is not None:
            assert parameter.grad.stride() == parameter.stride(), parameter.shape

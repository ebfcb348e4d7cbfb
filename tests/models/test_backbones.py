import urllib.error

import pytest
import torch

from detlab.models import backbones
from detlab.models.backbones import BACKBONES, build_backbone, build_classifier_net


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_output_shape_matches_out_channels_and_stride(name):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    size = 64 if name != "alexnet" else 127  # AlexNet's 11x11/4 stem needs a bit more room
    with torch.no_grad():
        output = backbone(torch.rand(1, 3, size, size))
    assert output.shape[1] == backbone.out_channels
    # Each stride-2 stage floors the size, so the grid is within one cell of size / stride.
    assert abs(output.shape[2] - size / backbone.stride) <= 1.5


def test_small_backbone_is_exactly_stride_16():
    backbone = build_backbone("small").eval()
    with torch.no_grad():
        assert backbone(torch.rand(2, 3, 128, 96)).shape == (2, 256, 8, 6)


def test_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = build_backbone("resnet18")
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_backbone("resnet18", weights_path=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_full_torchvision_state_dict_loads_into_extractor(tmp_path):
    import torchvision

    full = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "full.pt"
    torch.save(full.state_dict(), path)
    loaded = build_backbone("mobilenet_v2", weights_path=path)
    assert torch.equal(loaded.state_dict()["features.0.0.weight"], full.state_dict()["features.0.0.weight"])


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_backbone("small").state_dict(), path)
    with pytest.raises(ValueError, match="missing"):
        build_backbone("resnet18", weights_path=path)
    with pytest.raises(FileNotFoundError):
        build_backbone("small", weights_path=tmp_path / "absent.pt")


def test_pretrained_without_internet_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="backbone-weights"):
        build_backbone("resnet18", pretrained=True)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet999")


def test_classifier_net_small_shapes():
    # Valid convolutions: 128 -> 126 -> 63 -> 61 -> 30 -> 28 -> 14 -> 12 -> 6 -> 4.
    net = build_classifier_net("small", window_size=128, hidden_dim=32)
    assert net.grid == (4, 4)
    net.features.eval(), net.hidden.eval()
    with torch.no_grad():
        assert net.hidden(net.features(torch.rand(3, 3, 128, 128))).shape == (3, 32)


def test_small_net_blocks_and_pool_options():
    features = build_classifier_net("small", window_size=64, num_blocks=4, pool="max", hidden_dim=8).features
    assert features.stride == 8 and features.out_channels == 256
    with pytest.raises(ValueError, match="2 to 5 blocks"):
        build_classifier_net("small", window_size=64, num_blocks=6)
    with pytest.raises(ValueError, match="pool"):
        build_classifier_net("small", window_size=64, pool="mean")
    with pytest.raises(ValueError, match="small"):
        build_classifier_net("alexnet", window_size=224, pool="max")


def test_classifier_net_alexnet_needs_224_window():
    with pytest.raises(ValueError, match="224"):
        build_classifier_net("alexnet", window_size=128)
    net = build_classifier_net("alexnet", window_size=224)
    assert net.grid == (6, 6) and net.hidden_dim == 4096


def test_backbones_dict_is_explicit():
    assert {"small", "alexnet", "vgg16", "resnet18", "resnet34", "resnet50"} <= set(backbones.BACKBONES)

"""head_hidden: a timm classifier's output layer becomes Linear -> ReLU -> Linear (the multi-task paper's
Dense(128) head), trained as part of the head group; refused where there is no timm classifier layer."""
import pytest
import torch
from torch import nn

from strokekit.config import load_config
from strokekit.models.registry import ModelNameError, build_model
from strokekit.training.param_groups import split_parameters


@pytest.mark.parametrize("model", ["resnet18", "mobilenetv2_100"])
def test_hidden_layer_between_pooling_and_output(model):
    plain = build_model(load_config(None, [f"model={model}"]))
    assert isinstance(plain.get_classifier(), nn.Linear)
    net = build_model(load_config(None, [f"model={model}", "head_hidden=128"]))
    head = net.get_classifier()
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (plain.get_classifier().in_features,
                                                                                   128, 2)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    assert {id(p) for p in head.parameters()} == {id(p) for p in split_parameters(net)["head"]}


@pytest.mark.parametrize("sets", [["model=tiny_cnn"], ["task=seg", "model=Unet", "encoder=resnet18"]])
def test_head_hidden_refused_without_a_timm_classifier(sets):
    with pytest.raises(ModelNameError, match="head_hidden"):
        build_model(load_config(None, [*sets, "head_hidden=128"]))

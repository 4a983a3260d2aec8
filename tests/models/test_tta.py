"""TTA: flips are undone exactly, flip-invariant models are unchanged, one forward pass per batch."""
import pytest
import torch

from strokekit.models.tta import FLIPS, apply_flip, forward_passes, predict_with_tta, resolve_flips

FLIP_SETS = [["none"], ["hflip"], ["vflip"], ["hvflip"], ["none", "hflip"], ["none", "hflip", "vflip", "hvflip"]]


class CountingModel:
    """Wraps a function and counts the forward calls and the batch sizes it saw."""

    def __init__(self, fn):
        self.fn, self.calls, self.batches = fn, 0, []

    def __call__(self, x):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.fn(x)


@pytest.mark.parametrize("flips", FLIP_SETS)
def test_identity_model_gives_back_its_input(flips):
    images = torch.rand(3, 2, 7, 5)  # non-square, asymmetric: a wrong un-flip shows
    model = CountingModel(lambda x: x)
    out = predict_with_tta(model, images, flips, spatial=True, activation="none")
    assert torch.equal(out, images)
    assert model.calls == 1 and model.batches == [3 * len(flips)]


def test_unflip_missing_would_be_caught():
    """Without un-flipping, an identity model's hflip output differs from the input (guards the test above)."""
    images = torch.rand(1, 1, 4, 4)
    assert not torch.equal(apply_flip(images, "hflip"), images)
    assert torch.equal(apply_flip(apply_flip(images, "hvflip"), "hvflip"), images)


@pytest.mark.parametrize("flips", FLIP_SETS)
def test_flip_invariant_classifier_unchanged(flips):
    images = torch.rand(4, 3, 8, 8)
    weights = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]])

    def pooled_linear(x):  # global mean pooling -> linear: invariant to every flip
        return x.mean(dim=(2, 3)) @ weights.T

    model = CountingModel(pooled_linear)
    out = predict_with_tta(model, images, flips, spatial=False, activation="softmax")
    expected = torch.softmax(pooled_linear(images), dim=1)
    torch.testing.assert_close(out, expected)
    assert model.calls == 1


def test_probabilities_are_averaged_not_logits():
    images = torch.zeros(1, 1, 2, 2)
    images[0, 0, 0, 0] = 1.0  # top-left pixel marks the orientation

    def corner_logit(x):  # a classifier that looks at the top-left pixel only
        return (x[:, 0, 0, 0] * 10.0 - 5.0)

    out = predict_with_tta(corner_logit, images, ["none", "hflip"], activation="sigmoid")
    expected = (torch.sigmoid(torch.tensor(5.0)) + torch.sigmoid(torch.tensor(-5.0))) / 2
    torch.testing.assert_close(out, expected.reshape(1))


def test_segmentation_softmax_unflipped_per_variant():
    images = torch.rand(2, 1, 6, 6)

    def two_class_unet(x):  # logits follow the pixel values: a spatially non-trivial output
        return torch.cat([x, -x], dim=1) * 3.0

    out = predict_with_tta(two_class_unet, images, list(FLIPS), spatial=True, activation="softmax")
    torch.testing.assert_close(out, torch.softmax(two_class_unet(images), dim=1))


def test_unknown_flip_lists_valid_names():
    with pytest.raises(KeyError, match="hvflip"):
        resolve_flips(["none", "rot90"])
    assert resolve_flips(None) == ["none"]
    assert resolve_flips("hflip") == ["hflip"]
    assert resolve_flips(["hflip", "hflip", "none"]) == ["hflip", "none"]


def test_forward_pass_count():
    cost = forward_passes(n_images=10, batch_size=4, flips=["none", "hflip"], n_models=3)
    assert cost["forward_passes"] == 9 and cost["images_through_models"] == 60

"""Digits data, the shipped classifier and the digits metrics (dit_duca.digits_metrics) on hand-made cases."""

import numpy as np
import pytest
import torch

from dit_duca.digits import (
    DIGITS_IMAGE_SIZE,
    HELDOUT_FRACTION,
    load_digits_split,
    split_indices,
    to_model_range,
    to_unit_range,
)
from dit_duca.digits_classifier import (
    DEFAULT_CLASSIFIER_PATH,
    REQUIRED_HELDOUT_ACCURACY,
    ClassifierConfig,
    DigitsClassifier,
    accuracy,
    load_classifier,
    save_classifier,
)
from dit_duca.digits_metrics import (
    class_accuracy,
    classify,
    digits_frechet_distance,
    digits_scores,
    features_frechet_distance,
    fidelity_scores,
    load_default_classifier,
    real_heldout_digits,
    to_classifier_size,
)
from duca_eval.errors import InputError


@pytest.fixture(scope="module")
def classifier():
    return load_default_classifier()


@pytest.fixture(scope="module")
def heldout():
    return real_heldout_digits()


def test_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, held = split_indices(labels)
    assert len(train) + len(held) == 1797 and not set(train) & set(held)
    assert abs(len(held) / 1797 - HELDOUT_FRACTION) < 0.01
    for c in range(10):                      # every digit keeps its share in the held-out split
        share = (labels[held] == c).sum() / (labels == c).sum()
        assert abs(share - HELDOUT_FRACTION) < 0.02
    again_train, again_held = split_indices(labels)
    assert np.array_equal(train, again_train) and np.array_equal(held, again_held)


def test_digits_are_16x16_in_model_range():
    split = load_digits_split("heldout")
    assert split.images.shape == (len(split), 1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)
    assert split.images.min() == -1.0 and split.images.max() == 1.0
    # ink 0 -> -1, ink 16 -> +1, before upsampling
    small = to_model_range(np.array([[[0.0, 16.0], [8.0, 4.0]]]), size=2)
    assert torch.equal(small, torch.tensor([[[[-1.0, 1.0], [0.0, -0.5]]]]))
    assert torch.equal(to_unit_range(small), torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]]))
    with pytest.raises(ValueError, match="split"):
        load_digits_split("test")


def test_shipped_classifier_loads_strictly_and_meets_the_bar(classifier, heldout):
    images, labels = heldout
    assert DEFAULT_CLASSIFIER_PATH.is_file()
    assert accuracy(classifier, images, labels) >= REQUIRED_HELDOUT_ACCURACY
    from safetensors.torch import load_file

    state = load_file(str(DEFAULT_CLASSIFIER_PATH))
    assert set(state) == set(classifier.state_dict())


def test_classifier_save_load_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    model = DigitsClassifier(ClassifierConfig(width=4, feature_dim=8)).eval()
    path = save_classifier(model, tmp_path / "c.safetensors")
    loaded = load_classifier(path)
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="dit_duca.digits_classifier"):
        load_classifier(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a digits classifier"):
        load_classifier(tmp_path / "other.safetensors")


def test_perfect_generator_gets_full_accuracy_and_zero_distance(classifier, heldout):
    images, labels = heldout
    preds, _ = classify(classifier, images)
    right = preds == labels
    # a "generator" that returns exactly the digits the classifier reads correctly, asked for their labels
    perfect, asked = images[right], labels[right]
    scores = digits_scores(classifier, perfect, asked, perfect)
    assert scores.accuracy == 1.0
    assert abs(scores.frechet_distance) < 1e-6
    # asking for the next digit instead makes every sample wrong; half wrong gives exactly 50%
    assert class_accuracy(classifier, perfect, (asked + 1) % 10) == 0.0
    half = asked.clone()
    n = (len(half) // 2) * 2
    half[: n // 2] = (half[: n // 2] + 1) % 10
    assert class_accuracy(classifier, perfect[:n], half[:n]) == 0.5


def test_frechet_distance_orders_real_and_fake(classifier, heldout):
    images, _ = heldout
    train = load_digits_split("train").images
    torch.manual_seed(0)
    noise = torch.rand(len(images), 1, 16, 16) * 2 - 1
    real_vs_train = digits_frechet_distance(classifier, train, images)
    noise_vs_real = digits_frechet_distance(classifier, noise, images)
    assert 0 < real_vs_train < noise_vs_real / 10


def test_frechet_distance_of_shifted_features_is_the_squared_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert features_frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), abs=1e-6)
    assert features_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_metrics_reject_bad_inputs(classifier, heldout):
    images, labels = heldout
    with pytest.raises(InputError, match="labels must have shape"):
        class_accuracy(classifier, images, labels[:-1])
    with pytest.raises(InputError, match=r"\(N, 1, 16, 16\)"):
        class_accuracy(classifier, torch.zeros(4, 3, 16, 16), labels[:4])
    with pytest.raises(InputError, match="empty"):
        classify(classifier, torch.zeros(0, 1, 16, 16))


def test_fidelity_scores_rank_perturbations(classifier, heldout):
    images = heldout[0][:40]
    same = fidelity_scores(classifier, images, images)
    assert same.psnr == float("inf") and same.feature_distance == 0.0
    assert same.frechet_to_uncached == pytest.approx(0.0, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=gen)
    small = fidelity_scores(classifier, (images + 0.05 * noise).clamp(-1, 1), images)
    large = fidelity_scores(classifier, (images + 0.4 * noise).clamp(-1, 1), images)
    # Every score orders the two perturbations the same way: more noise is further from the reference.
    assert 10.0 < large.psnr < 20.0 and 30.0 < small.psnr < 40.0    # noise std 0.2 and 0.025 in [0, 1] units
    assert 0.0 < small.feature_distance < large.feature_distance
    assert 0.0 < small.frechet_to_uncached < large.frechet_to_uncached
    # A different digit for every seed is far in the paired distance even though the set is the same.
    shuffled = fidelity_scores(classifier, images.roll(1, 0), images)
    assert shuffled.feature_distance > large.feature_distance
    assert shuffled.frechet_to_uncached == pytest.approx(0.0, abs=1e-6)


def test_32px_digits_pool_exactly_onto_the_classifier_size(classifier):
    d16, d32 = load_digits_split("heldout", 16), load_digits_split("heldout", 32)
    assert torch.equal(to_classifier_size(d32.images, classifier), d16.images)
    assert class_accuracy(classifier, d32.images, d32.labels) == class_accuracy(classifier, d16.images, d16.labels)
    with pytest.raises(InputError, match="power of two"):
        to_classifier_size(torch.zeros(2, 1, 24, 24), classifier)
    with pytest.raises(InputError, match="one shape"):
        fidelity_scores(classifier, d32.images[:4], d16.images[:4])


def test_eval_package_imports_no_model_package():
    """duca_eval is the generic side of the dependency: it must not import a model package (issue 15.5)."""
    import ast
    from pathlib import Path

    model_packages = {"dit_duca", "pixart_duca", "opensora_duca", "duca_scripts"}
    eval_dir = Path(__file__).resolve().parents[1] / "eval"
    offenders = []
    for path in sorted(eval_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in model_packages]
    assert len(list(eval_dir.rglob("*.py"))) > 5 and offenders == []

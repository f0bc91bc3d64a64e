"""Live parity of the evaluation metrics with the field's libraries (issue 12 item 3):

* FID / sFID / IS / precision-recall against torch-fidelity 0.4.0, end to end on image folders with one
  random Inception-v3 (convolutions re-initialised with kaiming, see ``duca_eval.testing``; no download).
* LPIPS against torchmetrics 1.9.0's ``LearnedPerceptualImagePatchSimilarity`` (same backbone file, the
  linear heads torchmetrics ships).
* CLIP score against torchmetrics' ``CLIPScore`` (a tiny random CLIP), on long prompts and negative cosines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duca_eval import testing
from duca_eval.fid import GaussianStats
from duca_eval.images import FolderImages
from duca_eval.inception import InceptionFeatures, compute_activations
from duca_eval.inception_score import inception_score
from duca_eval.precision_recall import precision_recall

torch_fidelity = pytest.importorskip("torch_fidelity", reason="torch-fidelity is in the eval extra")
torchmetrics = pytest.importorskip("torchmetrics", reason="torchmetrics is in the eval extra")

N_IMAGES = 8             # per folder (each costs a 299 px Inception pass on the CPU); 2 IS splits of 4
IS_SPLITS = 2
# The Frechet distances are compared on the first FRECHET_DIMS feature dimensions: the formula is the same
# at any width, and torch-fidelity's non-symmetric eigvals on 2048 x 2048 takes ~15 s on one CPU core.
FRECHET_DIMS = 256


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    weights = testing.make_random_inception_weights(root / "inception.pth")
    a = root / "a"
    b = root / "b"
    testing.write_random_images(a, N_IMAGES, size=32, seed=1)
    testing.write_random_images(b, N_IMAGES, size=32, seed=2)
    return weights, a, b


@pytest.fixture(scope="module")
def ours(folders):
    weights, a, b = folders
    extractor = InceptionFeatures(weights)
    return (compute_activations(FolderImages(sorted(a.glob("*.png")), str(a)), extractor, 8, progress=False),
            compute_activations(FolderImages(sorted(b.glob("*.png")), str(b)), extractor, 8, progress=False))


def test_extractor_is_torch_fidelity_inception(folders):
    """Our pool / logit features are torch-fidelity's own extractor (same class, same layers), so the
    feature parity holds by construction; the metric math is compared below on those features."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = InceptionFeatures(folders[0])
    assert isinstance(extractor.model, FeatureExtractorInceptionV3)
    assert extractor.model.features_list == ["2048", "logits_unbiased"]


def test_fid_is_prc_match_torch_fidelity(ours):
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    acts_a, acts_b = ours
    pool_a, pool_b = acts_a.pool[:, :FRECHET_DIMS], acts_b.pool[:, :FRECHET_DIMS]
    stats = [fid_features_to_statistics(torch.from_numpy(x.astype(np.float64))) for x in (pool_a, pool_b)]
    theirs_fid = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    fid = GaussianStats.from_features(pool_a).frechet_distance(GaussianStats.from_features(pool_b))
    assert fid > 0.01                                  # the kaiming re-init makes the features non-degenerate
    # 1e-5: with fewer samples than dimensions the covariances are singular, and torch-fidelity's
    # sqrt(eigvals(S1 S2)) sums the square roots of ~2000 round-off eigenvalues (measured 1.3e-6 apart)
    assert fid == pytest.approx(theirs_fid, rel=1e-5)
    theirs_is = isc_features_to_metric(torch.from_numpy(acts_a.logits), splits=IS_SPLITS, shuffle=False)
    assert inception_score(acts_a.logits, split_size=N_IMAGES // IS_SPLITS) == pytest.approx(
        theirs_is["inception_score_mean"], rel=1e-9)
    # torch-fidelity: features_1 = generated, features_2 = real; Euclidean distances (cdist) in float32
    theirs_pr = prc_features_to_metric(torch.from_numpy(acts_a.pool), torch.from_numpy(acts_b.pool),
                                       prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    pr = precision_recall(acts_b.pool, acts_a.pool, distance="float32")
    assert (pr.precision, pr.recall) == (theirs_pr["precision"], theirs_pr["recall"])


def test_sfid_frechet_matches_torch_fidelity_statistics(ours):
    """torch-fidelity has no sFID layer; the Frechet distance of our spatial (mixed_6/conv) features must
    equal its Frechet formula on the same features."""
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    acts_a, acts_b = ours
    assert acts_a.spatial.shape[1] == 17 * 17 * 7
    sp_a, sp_b = acts_a.spatial[:, :FRECHET_DIMS], acts_b.spatial[:, :FRECHET_DIMS]
    stats = [fid_features_to_statistics(torch.from_numpy(x.astype(np.float64))) for x in (sp_a, sp_b)]
    theirs = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    got = GaussianStats.from_features(sp_a).frechet_distance(GaussianStats.from_features(sp_b))
    assert got == pytest.approx(theirs, rel=1e-5)


# ------------------------------------------------------------------------ LPIPS vs torchmetrics

def test_lpips_matches_torchmetrics_with_its_shipped_heads(tmp_path, monkeypatch):
    """Same AlexNet backbone (a random one, placed where torchvision looks for the ImageNet file) and the
    LPIPS v0.1 heads that torchmetrics ships, which ours now finds offline on its own."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    from duca_eval.lpips import LPIPS, resolve_lpips_weights, torchmetrics_heads

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backbone, _ = testing.make_random_lpips_weights(tmp_path / "w", "alex")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(backbone.read_bytes())   # torchvision's file name

    weights = resolve_lpips_weights("alex", backbone=backbone)
    assert weights.heads == torchmetrics_heads("alex") and weights.heads.is_file()
    ours = LPIPS(weights)
    theirs = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="sum").eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    got = ours(a, b)
    with torch.no_grad():
        expected = torch.stack([theirs(a[i:i + 1], b[i:i + 1]) for i in range(3)])
        theirs.reset()
    assert got.min() > 0
    torch.testing.assert_close(got, expected.flatten(), rtol=1e-5, atol=1e-7)


def test_lpips_heads_missing_everywhere_is_a_clear_error(tmp_path, monkeypatch):
    from duca_eval import lpips
    from duca_eval.errors import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DUCA_EVAL_OFFLINE", "1")
    monkeypatch.setattr(lpips, "torchmetrics_heads", lambda net: None)     # as without torchmetrics installed
    backbone, _ = testing.make_random_lpips_weights(tmp_path / "w", "alex")
    with pytest.raises(MissingWeightsError, match=r"torchmetrics.*lpips_models/alex\.pth"):
        lpips.resolve_lpips_weights("alex", backbone=backbone)


# ------------------------------------------------------------------------ CLIP score vs torchmetrics

class _Tm5Clip(torch.nn.Module):
    """transformers 5 returns model outputs from get_*_features, which torchmetrics 1.9 cannot use
    (environment.md); this wrapper returns the projected pooled embeddings, as transformers 4 did."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_text_features(self, input_ids, attention_mask=None):
        out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.model.text_projection(out.pooler_output)

    def get_image_features(self, pixel_values):
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixel_values).pooler_output)


LONG_PROMPT = " ".join(["a photo of a red cat sitting on a blue mat next to a dog"] * 10)   # > 77 tokens


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return testing.make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=1)   # mixed-sign cosines


def test_clip_score_is_torchmetrics_clipscore(tiny_clip):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    from duca_eval.clip_score import ClipScorer, mean_clip_score

    model = _Tm5Clip(CLIPModel.from_pretrained(tiny_clip).eval())
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    scorer = ClipScorer(tiny_clip)
    assert len(scorer.processor(text=[LONG_PROMPT])["input_ids"][0]) > scorer.max_length
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    prompts = [LONG_PROMPT, "a cat", "a dog on a mat", LONG_PROMPT + " red", "blue", "the cat"]
    with torch.no_grad():
        theirs_pairs, _ = _clip_score_update(list(images), prompts, model, processor)
        metric = CLIPScore(model_name_or_path=lambda: (model, processor))
        metric.update(list(images), prompts)
        theirs = float(metric.compute())
    ours_pairs = scorer([im.permute(1, 2, 0).numpy() for im in images], prompts)
    np.testing.assert_allclose(ours_pairs, theirs_pairs.numpy(), rtol=1e-5, atol=1e-4)
    assert scorer.mean(ours_pairs) == pytest.approx(theirs, rel=1e-5, abs=1e-4)
    # the cases where the definitions part: negative cosines (clamped per pair or not), long prompts
    assert (ours_pairs < 0).any() and (ours_pairs > 0).any()
    assert theirs == 0.0 < mean_clip_score(ours_pairs, "clamped_pairs")      # the mean cosine is negative
    keep_eot = ClipScorer(tiny_clip, definition="clamped_pairs")
    alt_pairs = keep_eot([im.permute(1, 2, 0).numpy() for im in images], prompts)
    long_rows = [0, 3]
    assert np.abs(alt_pairs[long_rows] - ours_pairs[long_rows]).min() > 1e-3   # a different pooled token
    np.testing.assert_allclose(alt_pairs[[1, 2, 4, 5]], ours_pairs[[1, 2, 4, 5]], rtol=1e-6, atol=1e-5)


def test_clip_score_means():
    from duca_eval.clip_score import mean_clip_score
    from duca_eval.errors import InputError

    pairs = np.array([30.0, -50.0, 10.0])
    assert mean_clip_score(pairs) == 0.0                                   # max(mean, 0): mean is -3.33
    assert mean_clip_score(pairs, "clamped_pairs") == pytest.approx(40.0 / 3)
    assert mean_clip_score(np.array([30.0, -10.0])) == pytest.approx(10.0)
    with pytest.raises(InputError, match="torchmetrics"):
        mean_clip_score(pairs, "mean")


class _WritesAMarker:
    """A pickled object whose unpickling runs code: what a hostile weights file holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_inception_weights_that_pickle_code_are_refused_unloaded(tmp_path):
    """torch-fidelity unpickles --inception-weights with weights_only=False; our extractor reads the file
    with weights_only=True first, so a file that would run code is refused and the code never runs."""
    from duca_eval.errors import InputError

    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _WritesAMarker(marker)}, hostile)
    refused = r"hostile.pth is not a usable .* state dict \(not a plain state dict, refused unloaded"
    with pytest.raises(InputError, match=refused):
        InceptionFeatures(hostile)
    assert not marker.exists()

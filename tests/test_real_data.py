"""Real photographs, real human judgments, real pretrained weights (slow; CI runs them)."""

import pytest
from sklearn.model_selection import RepeatedKFold

from sklearn_ais import AISSelector, DNNFeatureMapTransformer
from sklearn_ais.metrics import alignment_score
from sklearn_ais.model_selection import RepeatedPairKFold, cross_validate_alignment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def k92():
    import os

    from sklearn_ais.datasets import load_kriegeskorte92

    if not os.environ.get("SKLEARN_AIS_DATA"):
        pytest.skip("real data folder not available (set SKLEARN_AIS_DATA)")
    return load_kriegeskorte92(download=False)


@pytest.fixture(scope="module")
def k92_maps(k92):
    return DNNFeatureMapTransformer(device="cpu").fit_transform(k92.images)


def test_pretrained_embedding_aligns_and_random_does_not(k92, k92_maps):
    pretrained = alignment_score(k92_maps.embed(), k92.similarity)
    random = DNNFeatureMapTransformer(weights=None, device="cpu", random_state=0).fit_transform(k92.images)
    untrained = alignment_score(random.embed(), k92.similarity)
    assert pretrained >= 0.25, pretrained
    assert untrained < 0.2, untrained


@pytest.mark.parametrize(
    "cv", [RepeatedKFold(n_splits=5, n_repeats=4, random_state=0), RepeatedPairKFold(5, n_repeats=4, random_state=0)],
    ids=["images", "pairs"],
)
def test_selected_maps_beat_all_maps_out_of_sample(k92, k92_maps, cv):
    res = cross_validate_alignment(AISSelector(device="cpu"), k92_maps, k92.similarity, cv=cv, test="corrected_t")
    s = res.summary
    assert s.test_score_selected > s.test_score_full
    assert s.p_value < 0.01
    assert (res.table.n_selected < k92_maps.n_maps).all()

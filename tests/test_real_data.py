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


def test_triplet_selection_raises_held_out_odd_one_out_accuracy(k92, k92_maps):
    """20,000 triplets simulated from the mean human similarity (an observer agreeing with it in 65 % of triplets):
    AIS fitted on the training images' triplets (log-likelihood) raises the odd-one-out accuracy of the test images'
    triplets over all maps, in image-wise 5-fold CV repeated 4 times (+0.022; 8 repeats in benchmarks/triplets.py --k92)."""
    import numpy as np
    from sklearn.model_selection import RepeatedKFold

    from sklearn_ais._triplets import check_triplet_target
    from sklearn_ais.datasets import simulate_triplets
    from sklearn_ais.metrics import triplet_score

    E = k92_maps.embed().astype(np.float64)
    T = check_triplet_target(simulate_triplets(k92.similarity, 20_000, temperature=0.003, random_state=0), len(E))
    gains = []
    for train, test in RepeatedKFold(n_splits=5, n_repeats=4, random_state=0).split(E):
        sel = AISSelector(comparison="triplet_log_likelihood", temperature=0.1, device="cpu").fit(E[train], T.take(train))
        held = T.take(test).indices
        assert not np.isin(test[held], train).any()  # no held-out triplet touches a training image
        gains.append(triplet_score(E[test] * sel.support_, held) - triplet_score(E[test], held))
    assert np.mean(gains) > 0.01, np.mean(gains)

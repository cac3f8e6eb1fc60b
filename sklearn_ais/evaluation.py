"""Evidence that a heatmap means what it says: deletion and insertion tests, pair heatmaps, WordNet checks.

* :func:`deletion_test`, :func:`deletion_curves` -- remove (or reveal) the top
  x % pixels of each image by a heatmap, re-extract the maps and follow the
  held-out row 2OI with the human matrix and the class logit; areas under the
  curves compared by paired tests over images (AIS against controls and
  against other heatmap sources).
* :func:`noisy_linear_imputation`, :func:`remove_pixels` -- ROAD's removal
  (Rong et al., 2022), blur and constant fill; :func:`random_maps`,
  :func:`center_bias_maps` -- control heatmaps.
* :func:`pair_heatmaps` -- which regions of images i and j make the model's
  similarity of the pair agree with people's (an exact decomposition of the
  2OI into pair terms, projected onto both images).
* :func:`wordnet_similarity`, :func:`wordnet_alignment` -- the WordNet
  hierarchy as a similarity matrix (path, Wu-Palmer, depth of the lowest
  common hypernym) and the 2OI of an embedding with it before and after a
  selection (Tarigopula et al., 2023).
"""

from ._deletion import CONTROLS, DeletionCurves, deletion_curves, deletion_test
from ._pair_heatmaps import pair_heatmaps
from ._removal import (REMOVALS, area_under_curve, center_bias_maps, noisy_linear_imputation, random_maps,
                       removal_order, remove_pixels)
from ._wordnet import WORDNET_MEASURES, WordNetNotFoundError, load_wordnet, wordnet_alignment, wordnet_similarity

__all__ = [
    "CONTROLS",
    "REMOVALS",
    "WORDNET_MEASURES",
    "DeletionCurves",
    "WordNetNotFoundError",
    "area_under_curve",
    "center_bias_maps",
    "deletion_curves",
    "deletion_test",
    "load_wordnet",
    "noisy_linear_imputation",
    "pair_heatmaps",
    "random_maps",
    "removal_order",
    "remove_pixels",
    "wordnet_alignment",
    "wordnet_similarity",
]

"""Datasets: real images with human similarity judgments, a synthetic task, and a folder of your own.

Real data are read from a data folder (``data_home`` argument, else the
``SKLEARN_AIS_DATA`` environment variable, else ``~/sklearn_ais_data``) and
downloaded, with sha256 verification, from pinned public addresses when
missing.
"""

from ._base import DataUnavailableError, get_data_home
from ._folder import load_image_folder, write_example_folder
from ._kriegeskorte import load_kriegeskorte92
from ._peterson import load_peterson_animals
from ._synthetic import make_planted_patch_task, make_similarity_task
from ._things import load_things_similarity
from ._things_triplets import load_things_triplets, simulate_triplets

__all__ = [
    "DataUnavailableError",
    "get_data_home",
    "load_image_folder",
    "load_kriegeskorte92",
    "load_peterson_animals",
    "load_things_similarity",
    "load_things_triplets",
    "make_planted_patch_task",
    "make_similarity_task",
    "simulate_triplets",
    "write_example_folder",
]

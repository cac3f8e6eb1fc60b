"""Reading users' files (``sklearn_ais._files``): strict matrix text files, .mat variables, image order."""

import os

import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from sklearn_ais._files import InputFileError, list_image_files, natural_key, read_matrix

S = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, np.nan], [0.2, np.nan, 1.0]])


def _cells(sep, decimal=".", missing=""):
    return "\n".join(sep.join(missing if np.isnan(v) else str(v).replace(".", decimal) for v in row) for row in S)


@pytest.mark.parametrize(
    "name, text",
    [
        ("comma.csv", _cells(",")),
        ("nan-token.csv", _cells(",", missing="NaN")),
        ("na-token.csv", _cells(",", missing="NA")),
        ("semicolon-decimal-comma.csv", _cells(";", decimal=",")),
        ("tab.tsv", _cells("\t", missing="nan")),
        ("spaces.txt", _cells(" ", missing="nan")),
        ("quoted-decimal-comma.csv",
         "\n".join(",".join(f'"{v}"'.replace(".", ",") if not np.isnan(v) else "" for v in row) for row in S)),
    ],
)
def test_separators_and_missing_tokens(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    np.testing.assert_array_equal(read_matrix(tmp_path / name), S)


@pytest.mark.parametrize(
    "write",
    [
        lambda p: pd.DataFrame(S, index=list("abc"), columns=list("abc")).to_csv(p),  # header + index labels
        lambda p: pd.DataFrame(S).to_csv(p),  # integer labels, empty corner
        lambda p: pd.DataFrame(S).to_csv(p, index=False),  # integer header only
        lambda p: pd.DataFrame(S, index=list("abc"), columns=list("abc")).to_csv(p, sep=";", decimal=","),
        lambda p: np.savetxt(p, S, delimiter=","),  # 'nan' tokens
    ],
    ids=["labels", "int-labels", "int-header", "european", "savetxt"],
)
def test_header_rows_and_index_columns(tmp_path, write):
    write(tmp_path / "m.csv")
    np.testing.assert_array_equal(read_matrix(tmp_path / "m.csv"), S)


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,0.5x,0.2\n0.5,1,\n0.2,,1", r"line 1, column 2: '0.5x' is not a number"),
        ("1,0.5,0.2\n0.5,1,n/a?\n0.2,,1", r"line 2, column 3: 'n/a\?' is not a number"),
        ("a,b,c\n1,0.5,0.2\n0.5,1,oops\n0.2,0.1,1", r"line 3, column 3: 'oops'"),
        ("1,0.5,0.2\n1,0.1\n1", "upper- or lower-triangle-only"),
        ("1,2,5\n3,4", "line 2: 2 values where line 1 has 3"),
        ("", "empty"),
    ],
)
def test_typos_and_shapes_are_errors_naming_the_cell(tmp_path, text, match):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputFileError, match=match):
        read_matrix(tmp_path / "m.csv")


def test_mat_variables_and_structs(tmp_path):
    savemat(tmp_path / "one.mat", {"RDM": S, "other": np.zeros(3)})
    np.testing.assert_array_equal(read_matrix(tmp_path / "one.mat"), S)
    savemat(tmp_path / "two.mat", {"a": S, "b": S})
    with pytest.raises(InputFileError, match="name the matrix with --similarity-key"):
        read_matrix(tmp_path / "two.mat")
    savemat(tmp_path / "struct.mat", {"s": {"RDM": S, "name": "x"}})
    np.testing.assert_array_equal(read_matrix(tmp_path / "struct.mat", "s.RDM"), S)
    with pytest.raises(InputFileError, match=r"'s' is a struct with fields \['RDM', 'name'\]"):
        read_matrix(tmp_path / "struct.mat", "s")
    subjects = np.array([{"RDM": S, "name": "s1"}, {"RDM": S, "name": "s2"}], dtype=object)
    savemat(tmp_path / "subjects.mat", {"rdms": subjects})
    with pytest.raises(InputFileError, match=r"an array of 2 structs with fields \['RDM', 'name'\]"):
        read_matrix(tmp_path / "subjects.mat", "rdms")
    with pytest.raises(InputFileError, match="no variable 'nope'"):
        read_matrix(tmp_path / "one.mat", "nope")


def test_npy_of_objects_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="not a numeric .npy"):
        read_matrix(tmp_path / "o.npy")


def test_natural_order_and_skipped_entries(tmp_path):
    names = [f"im{i}.png" for i in range(1, 17)]
    for name in names[::-1] + ["._im3.png", ".hidden.png", "notes.txt", "IM17.PNG"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    assert [f.name for f in list_image_files(tmp_path)] == names + ["IM17.PNG"]
    assert sorted(["a10", "a2", "A1", "b1"], key=natural_key) == ["A1", "a2", "a10", "b1"]


def test_undecodable_file_names_are_listed(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"im\xff.png")
    with open(raw, "wb") as fh:
        fh.write(b"x")
    (files,) = list_image_files(tmp_path)
    from sklearn_ais._files import display_name

    assert display_name(files.name) == "im\ufffd.png"

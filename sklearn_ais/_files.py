"""Reading a user's files: a folder of images and a similarity matrix (.npy, .csv/.tsv/.txt, .mat).

Everything here is strict: a value that cannot be read as what it claims to be
is an error that names the file, the row, the column and the text found, never
a silent "missing" or a silently different image order.

* Image folders are read in **natural order** (``im2`` before ``im10``),
  case-insensitively; hidden files (``.x.png``, macOS' ``._x.png``) and
  folders whose names end in an image suffix are skipped. The order used is
  returned, so callers write it beside every result.
* Matrix text files: the separator (``,``, ``;``, tab or spaces) and a
  decimal comma (``0,5`` with ``;`` or tab separators) are detected (a file
  whose cells can be read two ways, such as ``"1,500"`` = 1.5 or 1500, or
  decimal commas beside decimal points, is refused with the cell); a
  header row and an index column (pandas' ``to_csv`` default) are detected
  and dropped. Only empty cells and ``NaN``/``NA`` mean "pair not judged";
  any other text is an error naming the cell.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
MISSING_TOKENS = {"", "nan", "NaN", "NAN", "NA"}
MATRIX_SUFFIXES = (".npy", ".csv", ".tsv", ".txt", ".mat")


class InputFileError(ValueError):
    """A user file that cannot be read as what it should be; the message says where and why."""


def display_name(name) -> str:
    """A printable version of a file name (undecodable bytes become U+FFFD), safe for HTML, CSV and plots.

    Parameters
    ----------
    name : str, bytes or path-like

    Returns
    -------
    text : str
    """
    text = os.fsdecode(name) if isinstance(name, bytes) else str(name)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def natural_key(name: str):
    """Sort key of natural order: digit runs compare as numbers (``im2`` < ``im10``), text case-insensitively.

    Parameters
    ----------
    name : str

    Returns
    -------
    key : list of tuple
        Compare keys to sort names.
    """
    parts = re.split(r"(\d+)", name)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.casefold()) for p in parts if p] + [(2, 0, name)]


def list_image_files(folder) -> list[Path]:
    """Image files of a folder in natural order (hidden files and sub-folders skipped).

    Parameters
    ----------
    folder : str or path-like

    Returns
    -------
    files : list of Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["im10.png", "im2.png", "im1.png", "._im3.png", "notes.txt"]:
    ...     _ = (d / name).write_bytes(b"")
    >>> [f.name for f in list_image_files(d)]
    ['im1.png', 'im2.png', 'im10.png']
    """
    folder = Path(folder)
    files = [
        f
        for f in folder.iterdir()
        if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
    ]
    return sorted(files, key=lambda f: natural_key(display_name(f.name)))


# ---------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------
def read_matrix(path, key: str | None = None) -> np.ndarray:
    """A 2-D float matrix from a ``.npy``, ``.csv``/``.tsv``/``.txt`` or ``.mat`` file.

    Parameters
    ----------
    path : str or path-like
    key : str, optional
        Variable of a ``.mat`` file (``name`` or ``struct.field``); needed when
        the file holds more than one square matrix.

    Returns
    -------
    M : ndarray of shape (n_rows, n_cols), float64
        NaN where a cell was empty or ``NaN``/``NA``.

    Raises
    ------
    InputFileError
        The file is missing, of an unknown type, or holds something else than
        a numeric matrix (the message names the cell or variable).
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{display_name(path)}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            M = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise InputFileError(f"{display_name(path)}: not a numeric .npy array ({exc})") from None
        if M.dtype.kind not in "biuf":
            raise InputFileError(f"{display_name(path)}: holds an array of dtype {M.dtype}, not numbers")
        return np.asarray(M, dtype=np.float64)
    if suffix in (".csv", ".tsv", ".txt"):
        return read_matrix_text(p)
    if suffix == ".mat":
        return _read_mat(p, key)
    raise InputFileError(f"{display_name(path)}: use a .npy, .csv, .tsv, .txt or .mat file")


def _sniff_separator(lines: list[str]) -> str | None:
    """The separator that splits every non-empty line into the same number (> 1) of cells; None: whitespace."""
    sample = [ln for ln in lines if ln.strip()][:50]
    for sep in ("\t", ";", ","):
        counts = {len(next(csv.reader([ln], delimiter=sep))) for ln in sample}
        if len(counts) == 1 and counts.pop() > 1:
            return sep
    for sep in ("\t", ";", ","):  # ragged rows (a triangle, a typo): the separator that appears at all
        if any(sep in ln for ln in sample):
            return sep
    return None


def _split_lines(text: str, sep: str | None) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if sep is None:
        return [ln.split() for ln in lines]
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO("\n".join(lines)), delimiter=sep)]


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|Inf|INF|infinity|Infinity)$")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+([eE][+-]?\d+)?$")


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$")  # "1,500": 1.5 with a decimal comma, 1500 with grouping


def _decimal_comma(rows, name) -> bool:
    """Whether the numbers use a decimal comma; a file whose cells can be read two ways is refused.

    ``"0,5"`` or ``"1,25"`` can only be a decimal comma; ``"1,500"`` alone could be 1.5 or 1500 (a
    thousands separator), and a decimal comma beside decimal points (``"0,5"`` and ``0.8``) mixes two
    conventions: both are refused with the line, column and text of the cell.
    """
    commas, points = [], []
    for line, row in enumerate(rows, start=1):
        for col, cell in enumerate(row, start=1):
            if _DECIMAL_COMMA.match(cell):
                commas.append((line, col, cell))
            elif "." in cell and _NUMBER.match(cell):
                points.append((line, col, cell))
    if not commas:
        return False
    line, col, cell = commas[0]
    if points:
        p_line, p_col, p_cell = points[0]
        raise InputFileError(
            f"{name}, line {line}, column {col}: {cell!r} has a decimal comma but line {p_line}, column {p_col} "
            f"has a decimal point ({p_cell!r}): the file mixes two number formats; write every number one way"
        )
    if all(_THOUSANDS.match(c) for _, _, c in commas):
        value = float(cell.replace(",", "."))
        raise InputFileError(
            f"{name}, line {line}, column {col}: {cell!r} can be read two ways, {value:g} (decimal comma) or "
            f"{cell.replace(',', '')} (thousands separator); write numbers without thousands separators and with "
            "a decimal point"
        )
    return True


def _is_number(cell: str, decimal_comma: bool) -> bool:
    if decimal_comma:
        cell = cell.replace(",", ".")
    return bool(_NUMBER.match(cell))


def read_matrix_text(path) -> np.ndarray:
    """A matrix from a delimited text file (see the module docstring for the rules).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    M : ndarray of shape (n_rows, n_cols), float64

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> _ = p.write_text(",a,b\\na,1.0,\\nb,0.5,1.0\\n")  # pandas' to_csv: header, index, empty = NaN
    >>> read_matrix_text(p)
    array([[1. , nan],
           [0.5, 1. ]])
    """
    name = display_name(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    sep = _sniff_separator(text.splitlines())
    rows = _split_lines(text, sep)
    if not rows:
        raise InputFileError(f"{name}: the file is empty")
    decimal_comma = _decimal_comma(rows, name)

    def label(cell):  # text that is neither a number nor a missing-value token
        return cell not in MISSING_TOKENS and not _is_number(cell, decimal_comma)

    first = rows[0]
    corner_empty = first[0] in MISSING_TOKENS
    # A header row holds labels (most of its cells after the corner), or, as pandas' to_csv writes with
    # integer ids, an empty corner above an index column: n + 1 cells over n data rows.
    header = (
        sum(label(c) for c in first[1:]) > len(first[1:]) / 2
        or (corner_empty and len(rows) - 1 == len(first) - 1 and all(len(r) == len(first) for r in rows[1:]))
    )
    body, first_line = (rows[1:], 2) if header else (rows, 1)
    if not body:
        raise InputFileError(f"{name}: the file holds a header row only")
    index = all(row and label(row[0]) for row in body) or (header and corner_empty)
    start_col = 1 if index else 0
    width = len(body[0]) - start_col
    values = np.full((len(body), width), np.nan)
    for r, row in enumerate(body):
        line = first_line + r
        row = row[start_col:]
        if len(row) != width:
            hint = (
                " (rows of decreasing length: an upper- or lower-triangle-only matrix? pass the full n x n matrix)"
                if len(body) > 2 and len({len(b) for b in body}) == len(body)
                else ""
            )
            raise InputFileError(f"{name}, line {line}: {len(row)} values where line {first_line} has {width}{hint}")
        for c, cell in enumerate(row):
            if cell in MISSING_TOKENS:
                continue
            if not _is_number(cell, decimal_comma):
                col = c + start_col + 1
                raise InputFileError(
                    f"{name}, line {line}, column {col}: {cell!r} is not a number (only empty cells, NaN and NA "
                    "mean 'pair not judged')"
                )
            values[r, c] = float(cell.replace(",", ".") if decimal_comma else cell)
    if index and len(body) == width:
        return values
    if not index and values.shape[0] + 1 == values.shape[1] and _is_row_numbers(values[:, 0]):
        return values[:, 1:]  # a numeric index column (0..n-1 or 1..n) in front of a square matrix
    if not header and values.shape[0] == values.shape[1] + 1 and _is_row_numbers(values[0]):
        return values[1:]  # a header of integer labels (pandas' to_csv(index=False) of an unlabelled frame)
    return values


def _is_row_numbers(col) -> bool:
    n = len(col)
    return bool(np.array_equal(col, np.arange(n)) or np.array_equal(col, np.arange(1, n + 1)))


def _read_mat(path: Path, key):
    from scipy.io import loadmat

    name = display_name(path)
    try:
        data = {k: v for k, v in loadmat(path, simplify_cells=True).items() if not k.startswith("__")}
    except Exception as exc:  # scipy raises several types for unreadable files
        raise InputFileError(f"{name}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    if key is None:
        square = {k: v for k, v in data.items() if _is_square(v)}
        if len(square) != 1:
            raise InputFileError(
                f"{name}: name the matrix with --similarity-key (square numeric variables: {sorted(square) or 'none'}; "
                f"all variables: {sorted(data)})"
            )
        return np.asarray(next(iter(square.values())), dtype=np.float64)
    value = data
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            fields = sorted(value) if isinstance(value, dict) else []
            raise InputFileError(f"{name}: no variable {key!r} (found: {fields})")
    if isinstance(value, dict):
        raise InputFileError(
            f"{name}: {key!r} is a struct with fields {sorted(value)}; name the matrix inside it, e.g. "
            f"--similarity-key {key}.{next(iter(sorted(value)), 'field')}"
        )
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        items = list(value)
        fields = sorted(items[0]) if items and isinstance(items[0], dict) else []
        what = f"an array of {len(items)} structs with fields {fields}" if fields else f"a cell array of {len(items)} items"
        raise InputFileError(
            f"{name}: {key!r} is {what}, not one matrix. Save the matrix to compare with (e.g. the mean of the "
            "subjects' matrices) as its own variable or .npy file"
        )
    M = np.asarray(value)
    if M.dtype.kind not in "biuf":
        raise InputFileError(f"{name}: {key!r} holds {M.dtype} values, not numbers")
    return M.astype(np.float64)


def _is_square(v) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == v.shape[1] > 1 and v.dtype.kind in "biuf"

"""One CSV file per client: a folder or a glob of files read as one federation.

Federated data usually arrives as one file per data holder (a hospital, a site). Every
front end reads such a layout through :func:`bayes_pfl.datasets.source`:

* ``--data hospitals/``: every ``*.csv`` file of the folder;
* ``--data 'hospitals/*.csv'``: the files a glob matches (quote it, so that the shell
  passes the pattern; ``**`` matches sub-folders).

Each file holds one client's rows and the client's label is the file's stem
(``cleveland.csv`` -> ``cleveland``), kept in a column named ``client``
(:data:`FILE_CLIENT_COL`) or ``--client-col``. When the files have that column, its values
label the rows instead: a file may then hold several clients, and a client's rows must all
be in one file. Clients come in the order of the file names.

The files are read as text and their columns typed once over all rows, exactly as one
CSV of all the files' rows would be (a column of integers in one file and decimals in
another is a float column; a column with text in any file is a text column). The result
equals reading that one CSV, row for row, so ``bayes-pfl fit --data hospitals/`` and
``bayes-pfl fit --data all.csv --client-col client`` fit the same data.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "b.csv").write_text("x,y\\n1,0.5\\n2,1.5\\n")
>>> _ = (folder / "a.csv").write_text("x,y\\n3.5,2.0\\n")
>>> [p.name for p in client_files(str(folder))]
['a.csv', 'b.csv']
>>> df = read_client_files(client_files(str(folder)), "client")
>>> df["client"].tolist(), df["x"].tolist()
(['a', 'b', 'b'], [3.5, 1.0, 2.0])
"""

from __future__ import annotations

import glob
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bayes_pfl.data import DataError

__all__ = ["FILE_CLIENT_COL", "client_files", "is_client_files", "read_client_files"]

FILE_CLIENT_COL = "client"
"""The client column of files read one per client when ``--client-col`` is not given."""

_GLOB_CHARS = frozenset("*?[")


def is_client_files(data: str) -> bool:
    """Whether ``data`` names a folder or a glob (not one existing file)."""
    path = Path(data).expanduser()
    if path.is_dir():
        return True
    return not path.is_file() and bool(_GLOB_CHARS & set(data))


def client_files(data: str, *, flag: str = "--data") -> list[Path]:
    """The CSV files of a folder (every ``*.csv`` in it but hidden ones, as a glob skips
    them: ``._x.csv`` copies of macOS) or of a glob, sorted by file name.

    Raises :class:`~bayes_pfl.data.DataError` when nothing matches, or when ``data`` is
    neither a folder nor a glob.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        found = [
            p
            for p in path.iterdir()
            if p.suffix.lower() == ".csv" and not p.name.startswith(".") and p.is_file()
        ]
        if not found:
            raise DataError(f"{flag} {data!r}: no *.csv file in the folder")
    elif is_client_files(data):
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        if not found:
            raise DataError(f"{flag} {data!r}: no file matches the pattern")
    else:
        raise DataError(f"{flag} {data!r} is neither a folder nor a glob of CSV files")
    return sorted(found, key=lambda p: (p.name, str(p)))


def _read_text(path: Path, flag: str) -> pd.DataFrame:
    """One file, every value as text (NaN where missing): types are inferred later, once."""
    try:
        df = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise DataError(f"{flag}: {path}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{flag}: {path}: cannot be parsed as CSV ({reason})") from None
    except OSError as exc:
        raise DataError(f"{flag}: {path}: cannot be read ({exc.strerror or exc})") from None
    if len(df) == 0:
        raise DataError(f"{flag}: {path}: no rows (only a header)")
    return df


def _listing(names) -> str:
    return ", ".join(repr(n) for n in names) or "none"


def read_client_files(
    paths: Sequence[str | Path], client_col: str = FILE_CLIENT_COL, *, flag: str = "--data"
) -> pd.DataFrame:
    """The rows of every file, one table with the client column ``client_col``.

    If the files have a column ``client_col`` it labels the rows (a client's rows must
    all be in one file); otherwise each file is one client, labelled by the file's stem,
    in a new first column ``client_col``. Rows keep the order of ``paths``, then of each
    file. Errors are :class:`~bayes_pfl.data.DataError` naming the file: an empty file,
    one that cannot be parsed, one whose columns differ from the first file's, two files
    with the same stem, a client with rows in two files.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError(f"{flag}: no files")
    parts = [_read_text(p, flag) for p in paths]
    columns = list(parts[0].columns)
    for path, part in zip(paths[1:], parts[1:], strict=True):
        missing = [c for c in columns if c not in part.columns]
        extra = [c for c in part.columns if c not in columns]
        if missing or extra:
            raise DataError(
                f"{flag}: {path} has other columns than {paths[0]}: missing "
                f"{_listing(missing)}; extra {_listing(extra)}"
            )
    by_column = client_col in columns
    if not by_column:
        first: dict[str, Path] = {}
        for path in paths:
            if path.stem in first:
                raise DataError(
                    f"{flag}: {first[path.stem]} and {path} have the same name {path.stem!r}: "
                    "each file is one client, labelled by its name"
                )
            first[path.stem] = path
    text = pd.concat([part[columns] for part in parts], ignore_index=True)
    # type every column once over all files, as read_csv types one CSV of all the rows
    buf = io.StringIO()
    text.to_csv(buf, index=False)
    buf.seek(0)
    frame = pd.read_csv(buf)
    file_of_row = [i for i, part in enumerate(parts) for _ in range(len(part))]
    if by_column:
        files_per_label = (
            pd.DataFrame({"label": frame[client_col], "file": file_of_row})
            .dropna()
            .groupby("label", sort=False)["file"]
            .unique()
        )
        for label, held in files_per_label.items():
            if len(held) > 1:
                a, b = (paths[i] for i in sorted(held)[:2])
                raise DataError(
                    f"{flag}: client {label!r} (column {client_col!r}) has rows in two files, "
                    f"{a} and {b}: a client's rows must be in one file"
                )
    else:
        frame.insert(0, client_col, [paths[i].stem for i in file_of_row])
    return frame

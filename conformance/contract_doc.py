"""The contract's text as the harness and ``rlconform explain`` read it: sections by anchor,
quotes, the canonical signatures, and links a reader can follow.

The text is ``conformance/contract.md``, shipped with the package: a byte-identical copy of the
repository's ``docs/contract.md`` (``tests/test_contract_doc.py`` keeps them equal), so quoting
works offline and from an installed wheel. Anchors are GitHub's heading slugs, so a link written
here opens the same section on GitHub. Standard library only; imports nothing of the harness.
"""

from __future__ import annotations

import difflib
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

PACKAGE = "conformance"
FILENAME = "contract.md"

#: the sections whose table lists canonical functions, first column `name(args)` in a code span
FUNCTION_SECTIONS = ("returns-and-advantages", "kl", "losses-on-tokens", "preferences",
                     "log-probabilities", "training-steps")

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})")
_TITLE = re.compile(r"\(v(\d+(?:\.\d+)*)\)\s*$")
_SIGNATURE = re.compile(r"^`([A-Za-z_]\w*)\((.*)\)`$")


@lru_cache(maxsize=1)
def text() -> str:
    """The packaged contract (``conformance/contract.md``)."""
    return resources.files(PACKAGE).joinpath(FILENAME).read_text(encoding="utf-8")


def _version(doc: str) -> str:
    first = doc.split("\n", 1)[0]
    match = _TITLE.search(first) if first.startswith("# ") else None
    if match is None:
        raise ValueError(f"{FILENAME}: the first line should be the title ending in (vX.Y), "
                         f"got {first!r}")
    return match.group(1)


#: the contract's version, from its title: "1.1" for "# The rlconform contract (v1.1)"
VERSION = _version(text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation removed
    (letters, digits, ``_`` and ``-`` kept), each space a ``-``."""
    s = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())    # [text](url) -> text
    s = re.sub(r"<[^>]+>", "", s)                                      # inline HTML
    s = s.replace("`", "").replace("*", "").lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@lru_cache(maxsize=1)
def _parsed() -> tuple[tuple[str, int, str, str], ...]:
    """(anchor, level, heading, body) per heading, in document order. Headings inside fenced
    code blocks are not headings. A body runs to the next heading of the same or a higher
    level, so it includes the section's subsections. Repeated slugs get -1, -2 (as GitHub)."""
    lines = text().splitlines()
    heads, fence = [], None
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None:
            h = _HEADING.match(line)
            if h:
                heads.append((i, len(h.group(1)), h.group(2)))
    out, seen = [], {}
    for k, (i, level, heading) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        anchor = slug(heading)
        if anchor in seen:
            seen[anchor] += 1
            anchor = f"{anchor}-{seen[anchor]}"
        else:
            seen[anchor] = 0
        out.append((anchor, level, heading, "\n".join(lines[i + 1:end]).strip("\n")))
    return tuple(out)


def sections() -> dict[str, tuple[str, str]]:
    """anchor -> (heading, body), every heading of the contract, in document order."""
    return {anchor: (heading, body) for anchor, _, heading, body in _parsed()}


def _unknown(anchor: str) -> KeyError:
    known = [a for a, *_ in _parsed()]
    close = difflib.get_close_matches(anchor, known, n=5, cutoff=0.5)
    close += [a for a in known if anchor and anchor in a and a not in close][: 5 - len(close)]
    hint = f"; close: {', '.join(close)}" if close else f"; anchors: {', '.join(known)}"
    return KeyError(f"no section #{anchor} in {FILENAME}{hint}")


def _find(anchor: str) -> tuple[str, int, str, str]:
    anchor = anchor.lstrip("#")
    for entry in _parsed():
        if entry[0] == anchor:
            return entry
    raise _unknown(anchor)


def quote(anchor: str, function: str | None = None) -> str:
    """The text of one section (its heading line, then its body with its subsections);
    ``KeyError`` naming the closest anchors for an unknown one. With ``function``, a section
    whose table has a row for that function is quoted as the table's header and that row."""
    _, level, heading, body = _find(anchor)
    if function is not None:
        lines = body.splitlines()
        row = next((i for i, ln in enumerate(lines) if ln.startswith(f"| `{function}(")), None)
        if row is not None:
            start = row
            while start > 0 and lines[start - 1].startswith("|"):
                start -= 1
            header = lines[start:start + 2] if start + 2 <= row else []
            return f"{'#' * level} {heading}\n\n" + "\n".join(header + [lines[row]]) + "\n"
    return f"{'#' * level} {heading}\n\n{body}".rstrip() + "\n"


def signatures() -> dict[str, str]:
    """name -> ``name(args...)`` for every canonical function, as written in the first column
    of the function tables (sections ``FUNCTION_SECTIONS``)."""
    out: dict[str, str] = {}
    for anchor in FUNCTION_SECTIONS:
        for line in _find(anchor)[3].splitlines():
            if not line.startswith("|"):
                continue
            first = re.split(r"(?<!\\)\|", line)[1].strip()
            m = _SIGNATURE.match(first)
            if m and m.group(1) not in out:
                out[m.group(1)] = first.strip("`")
    return out


def _packaged_path() -> Path:
    return Path(str(resources.files(PACKAGE).joinpath(FILENAME)))


def link(anchor: str | None = None, from_dir: str | os.PathLike | None = None) -> str:
    """A path to the contract a reader can follow, with ``#anchor``: relative to ``from_dir``
    (default: the current directory) when the repository's ``docs/contract.md`` exists beside
    the package's parent directory (a source checkout), else the packaged copy's absolute path.
    ``KeyError`` for an anchor the contract does not have."""
    fragment = f"#{_find(anchor)[0]}" if anchor else ""
    repo_doc = Path(__file__).resolve().parent.parent / "docs" / FILENAME
    if repo_doc.is_file():
        try:
            rel = os.path.relpath(repo_doc, Path(from_dir) if from_dir is not None else os.getcwd())
            return Path(rel).as_posix() + fragment
        except ValueError:                     # another drive (Windows): no relative path
            return repo_doc.as_posix() + fragment
    return _packaged_path().resolve().as_posix() + fragment


__all__ = ["FUNCTION_SECTIONS", "VERSION", "link", "quote", "sections", "signatures", "slug",
           "text"]

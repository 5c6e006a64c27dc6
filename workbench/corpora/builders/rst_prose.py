"""English prose from reStructuredText (the Python docs' `.rst.txt` sources).

Used only by `scripts/build_corpora.py`. A line-based reader that knows just enough rst
to keep the running text: it drops directives whose body is not prose (code blocks,
tables, indexes, toctrees, images, productions, doctests), the signature lines of
description directives (`.. function:: f(x)`, keeping their prose body), literal blocks
after `::`, doctest blocks, grid and simple tables, comments, footnotes and link targets;
it keeps admonitions (note, versionadded, ...) and renders inline markup as Sphinx shows
it (`:func:`len`` -> "len()", ``` ``x`` ``` -> "x", `` `text <url>`_ `` -> "text").
Paragraphs are reflowed to one line each and kept only if they read as prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Directives whose whole block (arguments and indented body) is dropped.
SKIPPED_DIRECTIVES = frozenset({
    "code-block", "sourcecode", "code", "literalinclude", "productionlist", "toctree", "index",
    "image", "figure", "table", "csv-table", "list-table", "math", "testcode", "testsetup",
    "testcleanup", "doctest", "testoutput", "highlight", "highlightlang", "raw", "include",
    "tabularcolumns", "autosummary", "moduleauthor", "sectionauthor", "module", "currentmodule",
    "audit-event", "audit-event-table", "availability", "rubric", "contents", "only", "parsed-literal",
    "program", "miscnews", "limited-api-list", "c:namespace", "centered", "sidebar", "epigraph",
})
# Directives whose argument is prose and whose body follows at once (no blank line needed).
ADMONITIONS = frozenset({
    "note", "warning", "seealso", "important", "tip", "caution", "attention", "danger", "hint",
    "error", "admonition", "impl-detail", "topic", "glossary",
})
# Sphinx's wording for the version directives; their first argument is a version number.
VERSION_DIRECTIVES = {
    "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}:",
    "deprecated": "Deprecated since version {}:",
    "deprecated-removed": "Deprecated since version {}, will be removed in version {}:",
}
# Every other directive (function, method, class, c:function, opcode, cmdoption, ...) is a
# description: its signature lines are dropped and its indented body is kept as prose.

_DIRECTIVE = re.compile(r"^\.\.\s+([A-Za-z][\w:-]*)::(.*)$")
_EXPLICIT_MARKUP = re.compile(r"^\.\.(\s|$)")  # comments, footnotes, targets, substitutions
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_<>])\1{2,}\s*$")
_SIMPLE_TABLE_BORDER = re.compile(r"^=+( +=+)+\s*$")
_BULLET = re.compile(r"^([*+\-•]|#\.|\d+\.|\(?[a-zA-Z0-9]\)|[a-z]\.)\s+(?=\S)")
_FIELD = re.compile(r"^:[\w .-]+:(\s+|$)")
_OPTION_LINE = re.compile(r"^:[\w-]+:")

_ROLE = re.compile(r"(?::[\w.+-]+)+:`((?:[^`\\]|\\.)*)`")
_LITERAL = re.compile(r"``(.+?)``")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
_REFERENCE = re.compile(r"`([^`]+)`__?")
_INTERPRETED = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(?![\s*])([^*]*?[^\s*\\])\*(?![\w*])")
_FOOTNOTE_REF = re.compile(r"\s*\[(#[\w-]*|\d+|\*)\]_")
_SUBSTITUTION = re.compile(r"\|([\w .-]+)\|_{0,2}")
_TARGET_SUFFIX = re.compile(r"(?<=[A-Za-z0-9])_(?=[\s.,;:)]|$)")


def render_role(role: str, content: str) -> str:
    """How Sphinx would show `:role:`content`` as plain text."""
    content = content.replace("\\", "")
    titled = re.match(r"^(.*?)\s*<([^<>]*)>$", content, re.S)
    if titled and titled.group(1):
        return titled.group(1)
    if titled:
        content = titled.group(2)
    if content.startswith("!"):
        content = content[1:]
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    name = role.strip(":").rsplit(":", 1)[-1]
    if name == "pep":
        return f"PEP {content}"
    if name == "rfc":
        return f"RFC {content}"
    if name == "issue":
        return f"bpo-{content}"
    if name == "gh":
        return f"gh-{content}"
    if name == "abbr":
        return re.sub(r"\s*\(.*\)$", "", content)
    if name in ("file", "samp"):
        return content.replace("{", "").replace("}", "")
    if name in ("func", "meth") and not content.endswith(")"):
        return content + "()"
    return content


def clean_inline(text: str) -> str:
    """Strip rst inline markup from one reflowed paragraph, keeping the visible text."""
    # Literals first, so markup-like characters inside them are left alone: swap them
    # out for placeholders and restore them at the end.
    kept: list[str] = []

    def hold(value: str) -> str:
        kept.append(value)
        return f"\x00{len(kept) - 1}\x00"

    text = _ROLE.sub(lambda m: hold(render_role(m.group(0)[: m.group(0).index("`")], m.group(1))), text)
    text = _LITERAL.sub(lambda m: hold(m.group(1)), text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _REFERENCE.sub(lambda m: m.group(1), text)
    text = _INTERPRETED.sub(lambda m: m.group(1), text)
    text = _FOOTNOTE_REF.sub("", text)
    text = _SUBSTITUTION.sub(lambda m: "3.11" if m.group(1) in ("version", "release") else m.group(1), text)
    text = _STRONG.sub(lambda m: m.group(1), text)
    text = _EMPHASIS.sub(lambda m: m.group(1), text)
    text = _TARGET_SUFFIX.sub("", text)
    text = text.replace("\\ ", "").replace("\\", "").replace(" --- ", " — ").replace("---", "—")
    text = re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)
    return re.sub(r"\s+", " ", text).strip()


def looks_like_prose(text: str, min_words: int = 5) -> bool:
    """A paragraph of running English text rather than a code fragment, list of names or table."""
    words = text.split()
    if len(words) < min_words:
        return False
    letters = sum(c.isalpha() for c in text)
    visible = sum(not c.isspace() for c in text)
    if letters < 0.7 * visible:
        return False
    plain_words = sum(1 for w in words if re.fullmatch(r"[A-Za-z][a-z'’-]*[,.;:!?)]?", w))
    return plain_words >= 0.5 * len(words)


@dataclass
class Section:
    """A titled section of an rst file: its title and prose paragraphs, one line each."""

    title: str
    paragraphs: list[str] = field(default_factory=list)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class _Reader:
    """Walks the lines of one rst file, collecting sections of prose paragraphs."""

    def __init__(self, text: str):
        self.lines = text.expandtabs(8).replace("\r\n", "\n").split("\n")
        self.sections: list[Section] = [Section(title="")]
        self.paragraph: list[str] = []
        self.paragraph_indent = 0  # indent of continuation lines of the current paragraph
        self.first_indent = 0  # indent of the paragraph's first line (before a bullet)

    # -- paragraphs --------------------------------------------------------------
    def flush(self) -> int | None:
        """End the current paragraph; return an indent to skip below if it opened a literal block."""
        if not self.paragraph:
            return None
        lines, self.paragraph = self.paragraph, []
        text = " ".join(line.strip() for line in lines)
        literal_follows = text.endswith("::")
        if literal_follows:  # rst: "Text::" shows "Text:", "Text ::" shows "Text", "::" nothing
            body = text[:-2]
            text = "" if not body.strip() else body.rstrip() if body.endswith(" ") else body + ":"
        if text and not text.startswith(">>>"):
            text = clean_inline(_FIELD.sub("", text))
            if looks_like_prose(text):
                self.sections[-1].paragraphs.append(text)
        return self.first_indent if literal_follows else None

    def start_paragraph(self, line: str) -> None:
        indent = _indent(line)
        body = line.strip()
        bullet = _BULLET.match(body)
        self.first_indent = indent
        self.paragraph_indent = indent + (bullet.end() if bullet else 0)
        self.paragraph = [body[bullet.end():] if bullet else body]

    # -- the walk ----------------------------------------------------------------
    def skip_block(self, i: int, indent: int) -> int:
        """Index of the first line after i that is non-blank and indented <= indent."""
        while i < len(self.lines) and (not self.lines[i].strip() or _indent(self.lines[i]) > indent):
            i += 1
        return i

    def skip_header(self, i: int) -> int:
        """Skip a description directive's signature continuation and option lines (up to a blank)."""
        while i < len(self.lines) and self.lines[i].strip():
            i += 1
        return i

    def read(self) -> list[Section]:
        lines, i = self.lines, 0
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if not stripped:
                skip = self.flush()
                i = self.skip_block(i + 1, skip) if skip is not None else i + 1
                continue
            indent = _indent(line)
            # Section titles: "Title\n=====" (optionally overlined too).
            if _ADORNMENT.match(stripped) and indent == 0 and nxt.strip() and i + 2 < len(lines) \
                    and _ADORNMENT.match(lines[i + 2].strip() or "x"):
                self.flush()
                self.sections.append(Section(title=clean_inline(nxt.strip())))
                i += 3
                continue
            if indent == 0 and not self.paragraph and _ADORNMENT.match(nxt.strip() or "x") \
                    and not _ADORNMENT.match(stripped) and len(nxt.strip()) >= min(len(stripped), 3):
                self.sections.append(Section(title=clean_inline(stripped)))
                i += 2
                continue
            if _ADORNMENT.match(stripped) and not self.paragraph:  # a transition line
                i += 1
                continue
            # Tables: simple tables end at a border followed by a blank line; grid tables at a blank.
            if not self.paragraph and _SIMPLE_TABLE_BORDER.match(stripped):
                i += 1
                while i < len(lines) and not (_SIMPLE_TABLE_BORDER.match(lines[i].strip())
                                              and (i + 1 >= len(lines) or not lines[i + 1].strip())):
                    i += 1
                i += 1
                continue
            if stripped.startswith(("+-", "+=")) or (stripped.startswith("| ") and not self.paragraph):
                self.flush()
                while i < len(lines) and lines[i].strip():
                    i += 1
                continue
            directive = _DIRECTIVE.match(stripped)
            if directive:
                self.flush()
                i = self.directive(i, indent, directive.group(1).lower(), directive.group(2).strip())
                continue
            if _EXPLICIT_MARKUP.match(stripped):
                self.flush()
                i = self.skip_block(i + 1, indent)
                continue
            if stripped.startswith(">>>") and not self.paragraph:
                while i < len(lines) and lines[i].strip():
                    i += 1
                continue
            # Ordinary text: continue the paragraph when the indentation matches.
            if self.paragraph and indent == self.paragraph_indent and not _BULLET.match(stripped):
                self.paragraph.append(stripped)
            else:
                skip = self.flush()
                if skip is not None:  # "text::" directly followed by an indented block
                    i = self.skip_block(i, skip)
                    continue
                self.start_paragraph(line)
            i += 1
        self.flush()
        return self.sections

    def directive(self, i: int, indent: int, name: str, argument: str) -> int:
        """Handle the directive on line i; return the index of the next line to read."""
        if name in SKIPPED_DIRECTIVES:
            return self.skip_block(i + 1, indent)
        if name in VERSION_DIRECTIVES:
            parts = argument.split(None, 2 if name == "deprecated-removed" else 1)
            versions = parts[: VERSION_DIRECTIVES[name].count("{}")]
            while len(versions) < VERSION_DIRECTIVES[name].count("{}"):
                versions.append("?")
            lead = VERSION_DIRECTIVES[name].format(*versions)
            rest = argument.split(None, len(versions))[len(versions):]
            return self.admonition_body(i + 1, indent, " ".join([lead, *rest]))
        if name in ADMONITIONS:
            return self.admonition_body(i + 1, indent, argument)
        return self.skip_header(i + 1)  # a description: the body after the blank line is prose

    def admonition_body(self, i: int, indent: int, first_text: str) -> int:
        """Start a paragraph with the directive's argument text; option lines are skipped."""
        while i < len(self.lines) and _OPTION_LINE.match(self.lines[i].strip()) and _indent(self.lines[i]) > indent:
            i += 1
        if i < len(self.lines) and self.lines[i].strip() and _indent(self.lines[i]) > indent:
            body_indent = _indent(self.lines[i])
            if first_text:
                self.paragraph, self.first_indent, self.paragraph_indent = [first_text], body_indent, body_indent
            return i
        if first_text:
            self.paragraph, self.first_indent, self.paragraph_indent = [first_text], indent + 3, indent + 3
        return i


def rst_sections(text: str) -> list[Section]:
    """The sections of one rst document with their prose paragraphs (empty sections kept)."""
    return _Reader(text).read()


def rst_documents(text: str, min_chars: int = 1000) -> list[str]:
    """Prose documents of one rst file: consecutive sections merged until >= min_chars.

    Each section contributes its title (a line of its own) and its paragraphs, separated
    by blank lines. A short tail is appended to the previous document.
    """
    docs: list[str] = []
    current: list[str] = []
    for section in rst_sections(text):
        if not section.paragraphs:
            continue
        if section.title:
            current.append(section.title)
        current.extend(section.paragraphs)
        if sum(map(len, current)) >= min_chars:
            docs.append("\n\n".join(current))
            current = []
    if current:
        tail = "\n\n".join(current)
        if docs and len(tail) < min_chars // 2:
            docs[-1] += "\n\n" + tail
        else:
            docs.append(tail)
    return docs

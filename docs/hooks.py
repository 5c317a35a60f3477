"""MkDocs hook: the docstrings' Sphinx roles (:func:`x`, :class:`X`) shown as code, as the pages write names."""

import re

ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc):(<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return ROLE.sub(r"\1", html)

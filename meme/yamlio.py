"""The project's YAML reader for the files users write (study files, dataset files).

``load_yaml(text, path)`` is ``yaml.safe_load`` with two changes: ``5e-4`` reads as a float (YAML 1.1
wants ``5.0e-4``), and a key given twice in one mapping is an error rather than the last one winning.
Syntax errors become one ``MemeError`` line that names the file.
"""
from __future__ import annotations

import re

import yaml

from meme.errors import MemeError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 5e-4 as a float and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, path: str = "<file>"):
    """The document in ``text`` (YAML or JSON), or a one-line ``MemeError`` naming ``path``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise MemeError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None

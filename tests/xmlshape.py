"""The shape of an XML document: element paths (namespace-qualified) and attribute names.

Faithfulness tests compare the emulator's documents with the platform's real
samples by shape, since values (ids, URLs, incarnations) differ by design.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def shape(document: bytes) -> set[str]:
    root = ET.fromstring(document)  # noqa: S314 - trusted test data
    paths: set[str] = set()

    def walk(element: ET.Element, prefix: str) -> None:
        path = f"{prefix}/{element.tag}"
        paths.add(path)
        for attribute in element.attrib:
            paths.add(f"{path}@{attribute}")
        for child in element:
            walk(child, path)

    walk(root, "")
    return paths

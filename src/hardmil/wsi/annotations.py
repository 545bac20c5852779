"""CAMELYON16 tumour annotations (ASAP XML polygons) -> patch labels and masks.

Format (ASAP, the annotation tool of the CAMELYON challenges; Litjens et al., GigaScience 2018,
doi:10.1093/gigascience/giy065)::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates>
            <Coordinate Order="0" X="68796.0" Y="101484.0" />
            ...

Coordinates are level-0 pixels (x to the right, y down). CAMELYON16's groups: ``Tumor``, ``_0`` and ``_1``
outline metastases; ``_2`` (and ``Exclusion``) outline normal areas inside them that do not count as tumour.
A point is tumour when it lies inside any tumour polygon and inside no exclusion polygon (even-odd rule within
one polygon). Group names are configurable (``tumour_groups`` / ``exclusion_groups``); annotations of other
groups are ignored.

Decisions:

* ``Polygon``, ``Spline`` and ``Rectangle`` annotations are areas; a ``Spline`` is read as the polygon through
  its control points (ASAP draws a smooth curve through them; the difference is a sliver along the outline).
  ``Dot`` / ``PointSet`` annotations (and polygons of fewer than 3 points) have no area and are skipped.
* Some CAMELYON XML files write decimal commas (``X="12345,5"``); they are read as decimal points.
* Patch labels: ``rule="centre"`` (default) -- a patch is tumour when its centre is tumour; ``rule="fraction"``
  -- when at least ``min_fraction`` of its area is, the area share being estimated on a regular
  ``samples x samples`` grid of points at the centres of equal sub-squares of the patch.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hardmil.utils import InputError

TUMOUR_GROUPS = ("Tumor", "tumor", "Tumour", "_0", "_1")
EXCLUSION_GROUPS = ("_2", "Exclusion", "exclusion")
AREA_TYPES = ("Polygon", "Spline", "Rectangle")


@dataclass
class Annotations:
    """Tumour and exclusion polygons of one slide, each ``[K, 2]`` float arrays of level-0 (x, y)."""

    tumour: list[np.ndarray] = field(default_factory=list)
    exclusion: list[np.ndarray] = field(default_factory=list)
    source: str = ""

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Bool ``[M]``: which level-0 ``points [M, 2]`` (x, y) are tumour (in a tumour polygon, in no exclusion)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return _inside_any(self.tumour, points) & ~_inside_any(self.exclusion, points)


def _number(text: str | None, where: str, source: str) -> float:
    if text is None:
        raise InputError(source, f"{where}: coordinate without X or Y")
    try:
        return float(text.strip().replace(",", "."))
    except ValueError:
        raise InputError(source, f"{where}: coordinate {text!r} is not a number") from None


def read_asap_xml(path: str | os.PathLike, tumour_groups=TUMOUR_GROUPS, exclusion_groups=EXCLUSION_GROUPS
                  ) -> Annotations:
    """The tumour and exclusion polygons of an ASAP XML file (level-0 coordinates, in ``Order``)."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except FileNotFoundError:
        raise InputError(p, "annotation file does not exist") from None
    except ET.ParseError as err:
        raise InputError(p, f"not well-formed XML: {err}") from None
    if root.tag != "ASAP_Annotations":
        raise InputError(p, f"not an ASAP annotation file (root element <{root.tag}>, expected <ASAP_Annotations>)")
    out = Annotations(source=str(p))
    for k, ann in enumerate(root.iter("Annotation")):
        name = ann.get("Name") or f"#{k}"
        group = ann.get("PartOfGroup", "")
        target = out.tumour if group in tumour_groups else out.exclusion if group in exclusion_groups else None
        if target is None or ann.get("Type", "Polygon") not in AREA_TYPES:
            continue
        coords = []
        for c in ann.iter("Coordinate"):
            where = f"annotation {name!r}"
            order = c.get("Order")
            coords.append((_number(order, where, str(p)) if order is not None else len(coords),
                           _number(c.get("X"), where, str(p)), _number(c.get("Y"), where, str(p))))
        if len(coords) < 3:
            continue
        coords.sort(key=lambda t: t[0])
        target.append(np.array([(x, y) for _, x, y in coords], dtype=np.float64))
    return out


def _inside_any(polygons: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    inside = np.zeros(len(points), dtype=bool)
    for poly in polygons:
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        near = np.flatnonzero(~inside & (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0])
                              & (points[:, 1] >= lo[1]) & (points[:, 1] <= hi[1]))
        if near.size:
            inside[near] = MplPath(poly, closed=False).contains_points(points[near])
    return inside


def patch_tumour_share(annotations: Annotations, coords: np.ndarray, patch_size: float, samples: int = 8
                       ) -> np.ndarray:
    """Share of each patch's area that is tumour, on a ``samples x samples`` point grid per patch.
    ``coords``: level-0 top-left corners ``[N, 2]`` (x, y); ``patch_size``: level-0 pixels."""
    if samples < 1:
        raise ValueError(f"samples {samples}: must be >= 1")
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    offsets = (np.arange(samples) + 0.5) * patch_size / samples
    ox, oy = np.meshgrid(offsets, offsets)
    pts = coords[:, None, :] + np.stack([ox.ravel(), oy.ravel()], axis=1)[None]  # [N, S*S, 2]
    return annotations.contains(pts.reshape(-1, 2)).reshape(len(coords), -1).mean(axis=1)


def annotation_patch_labels(annotations: Annotations, coords: np.ndarray, patch_size: float, *,
                            rule: str = "centre", min_fraction: float = 0.5, samples: int = 8) -> np.ndarray:
    """Patch labels (int64 0/1) from annotations: ``rule="centre"`` or ``"fraction"`` (see the module doc)."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if rule == "centre":
        return annotations.contains(coords + patch_size / 2).astype(np.int64)
    if rule == "fraction":
        if not 0 < min_fraction <= 1:
            raise ValueError(f"min_fraction {min_fraction}: must lie in (0, 1]")
        return (patch_tumour_share(annotations, coords, patch_size, samples) >= min_fraction).astype(np.int64)
    raise ValueError(f"rule {rule!r}: choose 'centre' or 'fraction'")


def annotation_mask(annotations: Annotations, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Bool mask ``shape`` (H, W) at ``downsample`` x level 0, rasterised with OpenCV (tumour polygons filled,
    then exclusion polygons cleared; a pixel is set when its centre lies inside, to OpenCV's 1/16-pixel
    precision). For drawing outlines; patch labels come from the polygons themselves."""
    import cv2

    mask = np.zeros(shape, dtype=np.uint8)
    for polys, value in ((annotations.tumour, 1), (annotations.exclusion, 0)):
        for poly in polys:
            pts = np.round((poly / downsample - 0.5) * 16).astype(np.int32)  # pixel centres, 4 fractional bits
            cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], value, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def find_annotation(directory: str | os.PathLike, slide: str) -> Path | None:
    """``{directory}/{slide}.xml`` if it exists (CAMELYON16's naming: ``tumor_001.xml`` beside ``tumor_001.tif``)."""
    p = Path(directory) / f"{slide}.xml"
    return p if p.exists() else None


def write_asap_xml(path: str | os.PathLike, tumour: list[np.ndarray], exclusion: list[np.ndarray] = (),
                   tumour_group: str = "_0", exclusion_group: str = "_2") -> None:
    """Write polygons (level-0 ``[K, 2]`` x, y) as an ASAP XML file, atomically."""
    from hardmil.utils import write_text

    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    for k, (poly, group) in enumerate([(p, tumour_group) for p in tumour] + [(p, exclusion_group) for p in exclusion]):
        a = ET.SubElement(anns, "Annotation", Name=f"Annotation {k}", Type="Polygon", PartOfGroup=group,
                          Color="#F4FA58")
        cs = ET.SubElement(a, "Coordinates")
        for i, (x, y) in enumerate(np.asarray(poly, dtype=float)):
            ET.SubElement(cs, "Coordinate", Order=str(i), X=repr(float(x)), Y=repr(float(y)))
    groups = ET.SubElement(root, "AnnotationGroups")
    for g in dict.fromkeys((tumour_group, exclusion_group)):
        ET.SubElement(ET.SubElement(groups, "Group", Name=g, PartOfGroup="None", Color="#FF0000"), "Attributes")
    ET.indent(root)
    write_text(path, '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n")


def patch_tumour_fraction(coords: np.ndarray, patch_size: int, downsample: float, mask: np.ndarray) -> np.ndarray:
    """Share of each patch's footprint on the thumbnail-resolution ``mask`` that is tumour (non-zero).
    ``coords``: level-0 top-left corners [N, 2] (x, y); ``patch_size``: level-0 pixels."""
    h, w = mask.shape
    out = np.zeros(len(coords), dtype=np.float64)
    size = max(1.0, patch_size / downsample)
    for i, (x, y) in enumerate(np.asarray(coords, dtype=float) / downsample):
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = min(w, max(x0 + 1, int(np.ceil(x + size)))), min(h, max(y0 + 1, int(np.ceil(y + size))))
        win = mask[max(0, y0):y1, max(0, x0):x1]
        out[i] = float((win > 0).mean()) if win.size > 0 else 0.0
    return out


def patch_labels(coords: np.ndarray, patch_size: int, downsample: float, mask: np.ndarray,
                 min_fraction: float = 0.5) -> np.ndarray:
    """1 where at least ``min_fraction`` of the patch's footprint on the thumbnail-resolution ``mask`` is
    tumour. ``coords``: level-0 top-left corners [N, 2] (x, y); ``patch_size``: level-0 pixels."""
    return (patch_tumour_fraction(coords, patch_size, downsample, mask) >= min_fraction).astype(np.int64)

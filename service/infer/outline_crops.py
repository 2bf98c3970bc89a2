"""A second, closer look at each delivered disc's and vertebra's outline, slice by slice.

The segmenter reads a whole sagittal slice at 1.3-2 mm a pixel and its class maps are upsampled to the
acquisition grid, so its outlines are soft by a pixel or more all round. On a disc 10 mm high that is a
large share of the area: most of the mIoU the segmenter loses is outline, not naming (model_export/RESULTS.md).
The outline refiner (``model_export.model.outline_refiner``) instead reads, for one structure on one
slice, a square of ``OutlineSpec.size_mm`` around it at about the acquisition's spacing: T2, T1, the
structure's delivered mask (the hint) and the other structures' masks. It returns the structure's mask on
that square, which is mapped back onto the slice.

The refiner only redraws outlines: the names, the count and which structures exist were settled by
post-processing (postprocess.py) and are kept. Where two refined structures claim a pixel the more
confident one has it; a structure is only drawn where its probability is over one half; the sacrum,
larger than the crop and with no findings, keeps its delivered outline. A structure the refiner would
erase entirely keeps its delivered outline too, so refining never loses a level.

Slices are refined from one before the structure's first delivered slice to one after its last, the hint
on an extra slice being its neighbour's mask: the segmenter often misses a structure's outermost slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from service.infer.level_crops import in_plane_steps
from service.ontology import Ontology

REFINED_KINDS = ("disc", "vertebra")
MAX_CONTEXT_SLICES = 3


@dataclass(frozen=True)
class OutlineSpec:
    """The refiner's view: a square of ``size_mm`` on ``pixels`` x ``pixels``, one slice at a time."""

    size_mm: float = 120.0
    pixels: int = 128
    context_slices: int = 0
    """Slices either side whose T2 and T1 the refiner also reads. A structure's outermost slices are
    where partial volume blurs its edge, and the neighbours show which way the edge runs; but one slice
    either side gained only +0.002 delivered mIoU on the test set (p = 0.21; better end slices, more discs
    drawn one slice too far: model_export/RESULTS.md, session 14), so the default reads the slice alone."""

    @property
    def input_channels(self) -> int:
        """T2 and T1 on each slice read, then the structure's hint mask and the other structures' mask."""
        return 2 * (2 * self.context_slices + 1) + 2

    @classmethod
    def from_card(cls, data: dict[str, Any]) -> OutlineSpec:
        spec = cls(float(data["size_mm"]), int(data["pixels"]), int(data.get("context_slices", 0)))
        if not 8.0 <= spec.size_mm <= 400.0 or not 16 <= spec.pixels <= 512 or spec.pixels % 8 \
                or not 0 <= spec.context_slices <= MAX_CONTEXT_SLICES:
            raise ValueError(f"outline refiner crop {data} is out of range (pixels a multiple of 8, "
                             f"at most {MAX_CONTEXT_SLICES} context slices)")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"size_mm": self.size_mm, "pixels": self.pixels, "context_slices": self.context_slices}


def refined_labels(ontology: Ontology) -> list[int]:
    return [s.label for s in ontology.structures if s.kind in REFINED_KINDS]


@dataclass(frozen=True)
class CropFrame:
    """The affine map from crop pixels (i, j) to slice indices: (row, col) = origin + i * di + j * dj.

    Crop columns run towards the patient's back and rows towards the feet (turned by ``angle_deg`` in
    training), as the level classifier's crops do, so the refiner sees every acquisition the same way up.
    """

    origin: np.ndarray
    di: np.ndarray
    dj: np.ndarray
    pixels: int

    @classmethod
    def around(cls, grid: Any, centre_rc: np.ndarray, spec: OutlineSpec, angle_deg: float = 0.0,
               scale: float = 1.0) -> CropFrame:
        back, down = in_plane_steps(grid)
        a = np.deg2rad(angle_deg)
        across = np.cos(a) * back + np.sin(a) * down
        along = -np.sin(a) * back + np.cos(a) * down
        step_mm = spec.size_mm * scale / spec.pixels
        half = (spec.pixels - 1) / 2
        di, dj = along * step_mm, across * step_mm
        origin = np.asarray(centre_rc, dtype=np.float64) - half * (di + dj)
        return cls(origin, di, dj, spec.pixels)

    def sample(self, image: np.ndarray, order: int = 1) -> np.ndarray:
        """(pixels, pixels) of a (rows, cols) slice; zeros off the slice. ``order`` 0 for masks."""
        return self.sample_slices(image[None], order)[0]

    def sample_slices(self, images: np.ndarray, order: int = 1) -> np.ndarray:
        """(k, pixels, pixels) of k (rows, cols) slices, the crop's coordinates computed once."""
        i, j = np.meshgrid(np.arange(self.pixels), np.arange(self.pixels), indexing="ij")
        coords = [self.origin[0] + i * self.di[0] + j * self.dj[0], self.origin[1] + i * self.di[1] + j * self.dj[1]]
        return np.stack([ndimage.map_coordinates(image, coords, order=order, cval=0.0).astype(np.float32)
                         for image in images])

    def footprint(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The box of slice pixels the crop covers, clipped to the slice."""
        corners = np.array([self.origin + i * self.di + j * self.dj
                            for i in (0, self.pixels - 1) for j in (0, self.pixels - 1)])
        low = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
        high = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, shape)
        return slice(int(low[0]), int(max(low[0], high[0]))), slice(int(low[1]), int(max(low[1], high[1])))

    def read_back(self, crop: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
        """A (pixels, pixels) crop map resampled onto the slice pixels of ``box``; zeros outside the crop."""
        rows, cols = np.meshgrid(np.arange(box[0].start, box[0].stop), np.arange(box[1].start, box[1].stop),
                                 indexing="ij")
        inverse = np.linalg.inv(np.column_stack([self.di, self.dj]))
        offset = np.stack([rows - self.origin[0], cols - self.origin[1]], axis=-1)
        ij = offset @ inverse.T
        return ndimage.map_coordinates(crop, [ij[..., 0], ij[..., 1]], order=1, cval=0.0)


@dataclass(frozen=True)
class OutlineJob:
    """One structure on one slice: where its crop lies and which slice's delivered mask is the hint."""

    label: int
    slice_index: int
    hint_slice: int
    frame: CropFrame


def structure_boxes_centres(labels: np.ndarray, wanted: list[int]) -> dict[int, tuple[list[int], np.ndarray]]:
    """label -> (its slices, the (row, col) centre of its 3D box), for the wanted labels present."""
    out = {}
    boxes = ndimage.find_objects(labels)
    for label in wanted:
        if label < 1 or label > len(boxes) or boxes[label - 1] is None:
            continue
        box = boxes[label - 1]
        per_slice = (labels[box] == label).reshape(box[0].stop - box[0].start, -1).any(axis=1)
        slices = [box[0].start + int(k) for k in np.flatnonzero(per_slice)]
        centre = np.array([(box[1].start + box[1].stop - 1) / 2, (box[2].start + box[2].stop - 1) / 2])
        out[label] = (slices, centre)
    return out


def outline_jobs(labels: np.ndarray, grid: Any, wanted: list[int], spec: OutlineSpec) -> list[OutlineJob]:
    """Every wanted structure on its delivered slices and one slice either side."""
    jobs = []
    for label, (slices, centre) in sorted(structure_boxes_centres(labels, wanted).items()):
        frame = CropFrame.around(grid, centre, spec)
        for k in range(max(slices[0] - 1, 0), min(slices[-1] + 2, labels.shape[0])):
            hint = min(slices, key=lambda s, k=k: (abs(s - k), s))
            jobs.append(OutlineJob(label, k, hint, frame))
    return jobs


def context_slices(k: int, num_slices: int, context: int) -> list[int]:
    """Slice ``k`` and ``context`` either side, in slice order; the end slice repeats past the stack."""
    return [min(max(k + offset, 0), num_slices - 1) for offset in range(-context, context + 1)]


def refiner_input(channels: np.ndarray, labels: np.ndarray, job: OutlineJob, context: int = 0) -> np.ndarray:
    """(``OutlineSpec.input_channels``, pixels, pixels): T2 on the job's slice and ``context`` either
    side, T1 on the same slices, then the masks from its hint slice."""
    hint = labels[job.hint_slice]
    frame = job.frame
    slices = context_slices(job.slice_index, labels.shape[0], context)
    masks = np.stack([hint == job.label, (hint != job.label) & (hint != 0)]).astype(np.float32)
    return np.concatenate([frame.sample_slices(channels[:, slices].reshape(-1, *hint.shape)),
                           frame.sample_slices(masks, order=0)])


class OutlineRefiner:
    """The outline refiner bound to one study: ``refine(labels)`` redraws each disc and vertebra.

    ``segment`` runs the refiner (ONNX Runtime in the worker, torch in evaluation) on (N, C, P, P) inputs
    and returns (N, P, P) logits.
    """

    def __init__(self, channels: np.ndarray, grid: Any, spec: OutlineSpec, wanted: list[int],
                 segment: Callable[[np.ndarray], np.ndarray], batch: int = 16) -> None:
        self.channels = channels
        self.grid = grid
        self.spec = spec
        self.wanted = wanted
        self.segment = segment
        self.batch = max(1, batch)
        self.seconds = 0.0
        """Time spent in ``refine`` so far (the worker reports it)."""

    def refine(self, labels: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._refine(np.asarray(labels, dtype=np.uint8))
        finally:
            self.seconds += time.perf_counter() - started

    def _refine(self, labels: np.ndarray) -> np.ndarray:
        jobs = outline_jobs(labels, self.grid, self.wanted, self.spec)
        refined = np.isin(labels, self.wanted)
        out = np.where(refined, 0, labels).astype(np.uint8)
        best = np.full(labels.shape, 0.5, np.float32)
        for start in range(0, len(jobs), self.batch):
            chunk = jobs[start:start + self.batch]
            logits = self.segment(np.stack([refiner_input(self.channels, labels, job, self.spec.context_slices)
                                            for job in chunk]))
            probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float32)))
            for job, prob in zip(chunk, probs, strict=True):
                box = job.frame.footprint(labels.shape[1:])
                p = job.frame.read_back(prob, box)
                here_best, here_out = best[job.slice_index][box], out[job.slice_index][box]
                wins = p > here_best
                here_best[wins] = p[wins]
                here_out[wins] = job.label
        for label in {job.label for job in jobs}:
            if not (out == label).any():  # erased: keep the delivered outline rather than lose the level
                keep = (labels == label) & (out == 0)
                out[keep] = label
        return out

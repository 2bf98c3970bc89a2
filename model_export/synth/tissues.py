"""Internal tissue classes: finer than the 19 output labels, so rendering can tell nucleus from annulus.

The renderer gives every class its own T1 and T2 signal; the output label map only knows which
vertebra or disc a voxel belongs to. Values are indices into the renderer's lookup tables.
"""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    MUSCLE = 2
    BOWEL = 3
    LUNG = 4
    MARROW = 5
    CORTEX = 6
    ANNULUS = 7
    NUCLEUS = 8
    NUCLEUS_DEGENERATED = 9
    CSF = 10
    CORD = 11
    EPIDURAL_FAT = 12
    LIGAMENT = 13
    VESSEL = 14
    MODIC1 = 15  # oedematous marrow: dark T1, bright T2
    MODIC2 = 16  # fatty marrow: bright T1, bright-ish T2
    SCLEROSIS = 17  # dark on both
    HERNIA = 18  # displaced disc material
    POSTERIOR_MARROW = 19  # marrow of pedicles, laminae and spinous processes
    NERVE = 20
    FLUID = 21  # bladder, bowel fluid
    KIDNEY = 22


NUM_TISSUES = len(Tissue)

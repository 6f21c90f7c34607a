"""N-Caltech101 recordings with Caltech101 static images.

Events: ``raw/<class>/*.bin`` (the ATIS 40-bit format of N-MNIST), or the same inside the
download's ``Caltech101/`` folder. Each recording has its own sensor size: the camera framed each
image at its own size, so ``(W, H)`` is ``max x + 1, max y + 1`` of that recording.

Classes: the 100 object classes. ``BACKGROUND_Google`` (clutter, not an object class) is skipped, as
is usual when N-Caltech101 is used for classification. N-Caltech101 has no ``Faces`` class (it was
made from ``Faces_easy``), so a Caltech101 ``Faces`` folder and its ``BACKGROUND_Google`` folder are
ignored on the static side too.

Statics: ``static/<class>/*.jpg`` (class names match), or the same inside ``101_ObjectCategories/``.
No published split: 9:1 per class (``test_fraction=0.1``), validation carved from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.binning import events_sensor_size
from pipelines.errors import BadInput
from pipelines.formats import IMAGE_SUFFIXES
from pipelines.formats.images import read_image
from pipelines.formats.nmnist import read_nmnist
from pipelines.sources.base import EventItem, Listing, PublishedCounts, SplitParams, StaticItem
from pipelines.sources.folder import class_folder_events, class_folder_statics, require_dir

# sorted() order (upper case first), the order of the download's folder listing
NCALTECH101_CLASSES = sorted(
    """accordion airplanes anchor ant barrel bass beaver binocular bonsai brain brontosaurus buddha
    butterfly camera cannon car_side ceiling_fan cellphone chair chandelier cougar_body cougar_face
    crab crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin dragonfly
    electric_guitar elephant emu euphonium ewer Faces_easy ferry flamingo flamingo_head garfield
    gerenuk gramophone grand_piano hawksbill headphone hedgehog helicopter ibis inline_skate
    joshua_tree kangaroo ketch lamp laptop Leopards llama lobster lotus mandolin mayfly menorah
    metronome minaret Motorbikes nautilus octopus okapi pagoda panda pigeon pizza platypus pyramid
    revolver rhino rooster saxophone schooner scissors scorpion sea_horse snoopy soccer_ball stapler
    starfish stegosaurus stop_sign strawberry sunflower tick trilobite umbrella watch water_lilly
    wheelchair wild_cat windsor_chair wrench yin_yang""".split()
)
SKIPPED_EVENT_FOLDERS = ("BACKGROUND_Google",)
SKIPPED_STATIC_FOLDERS = ("BACKGROUND_Google", "Faces")


def _nested(root: Path, name: str) -> Path:
    return root / name if (root / name).is_dir() else root


@dataclass
class NCaltech101Source(SplitParams):
    name: str = "ncaltech101"
    published_split = "no published split (9:1 per class)"
    #: the download holds 8,709 recordings in 101 folders, BACKGROUND_Google included (the count
    #: tonic's NCALTECH101 checks for); no per-class counts are carried (no source here confirms
    #: them), so a store is only checked for classes without any recording
    published = PublishedCounts(
        "N-Caltech101: 8,709 recordings with BACKGROUND_Google, every one of the 100 classes non-empty",
    )

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = require_dir(raw)
        base = _nested(raw, "Caltech101")
        events = class_folder_events(raw, base, NCALTECH101_CLASSES, (".bin",), skip=SKIPPED_EVENT_FOLDERS)
        statics, bad = [], []
        if static is not None:
            static = require_dir(static, "static folder")
            base = _nested(static, "101_ObjectCategories")
            statics, bad = class_folder_statics(
                static, base, NCALTECH101_CLASSES, IMAGE_SUFFIXES, skip=SKIPPED_STATIC_FOLDERS
            )
        return Listing(classes=list(NCALTECH101_CLASSES), events=events, statics=statics, bad_statics=bad)

    def default_static(self, raw: Path) -> Path | None:
        """Static root to use when none is given: this layout keeps none inside ``raw``."""
        return None

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        path = Path(raw) / item.path
        events = read_nmnist(path)
        if len(events) == 0:
            raise BadInput(path, "no events, so the sensor size cannot be inferred")
        return events, events_sensor_size(events)

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        return read_image(Path(static) / item.path)

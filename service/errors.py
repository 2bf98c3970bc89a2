"""One exception root, one subclass per stage.

Code in between the edges raises these; only the edges translate them: a DICOM status in the C-STORE
handler, an HTTP status in the API, retry-or-dead-letter in the worker, an exit message in the CLI.
Messages carry UIDs, counts, paths and reasons, never patient data.
"""


class LumbarAIError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(LumbarAIError):
    """Settings are missing or inconsistent."""


class ReceiveError(LumbarAIError):
    """An instance could not be received into the spool."""


class InvalidUIDError(ReceiveError):
    """A UID does not follow the DICOM UID grammar (and so may not become a path)."""


class SpoolFullError(ReceiveError):
    """Free disk space is below the configured reserve."""


class UndecodableDatasetError(ReceiveError):
    """The bytes received are not a DICOM dataset we can parse."""


class NotDicomError(UndecodableDatasetError):
    """The bytes are not a DICOM Part-10 stream at all (no 'DICM' prefix): another kind of file."""


class AssembleError(LumbarAIError):
    """A study could not be assembled into a job."""


class NoUsableSeriesError(AssembleError):
    """A study has no sagittal T1 or T2 series; the message lists what was found."""


class QueueError(LumbarAIError):
    """Redis could not be reached or answered something unexpected."""


class InferenceError(LumbarAIError):
    """The model could not run on a study."""


class ModelDirectoryError(InferenceError):
    """A model directory is missing a file or its model card is inconsistent."""


class SeriesDecodeError(InferenceError):
    """An instance of a selected series is unreadable or its pixel data cannot be decoded."""


class MissingSeriesError(InferenceError):
    """A job names a series that has no instances in the spool (deleted, or never fully received)."""


class NoStructureFoundError(InferenceError):
    """The model found no spinal structure in the series, so there is nothing to report."""


class InconsistentSeriesError(InferenceError):
    """The instances of a series do not form one volume (mixed size or orientation, duplicate or missing slices)."""


class EncodeError(LumbarAIError):
    """Results could not be encoded as DICOM SEG, SR or JSON."""


class UnencodableResultError(EncodeError):
    """The study's own headers or geometry keep a SEG, SR or preview from being built: retrying cannot help
    (a results folder that cannot be written is a plain EncodeError, and is retried)."""


class DeliveryError(LumbarAIError):
    """A C-STORE to a destination failed."""


class SynthError(LumbarAIError):
    """Synthetic study generation was asked for something impossible."""


class StudyNotFoundError(QueueError):
    """No state is recorded for this StudyInstanceUID."""


class ModelExportError(LumbarAIError):
    """An exported model failed its own check (ONNX checker, runtime parity, label-map agreement)."""

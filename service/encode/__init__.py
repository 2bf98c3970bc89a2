"""⑤ encode: DICOM SEG, TID 1500 SR, the JSON report and the preview image."""

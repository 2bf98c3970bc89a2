"""① receive: the DICOM listener (C-ECHO, C-STORE) and the durable spool it writes."""

"""pacs: a small, self-hosted PACS (DICOM gateway, durable archive, DICOMweb, viewer, appraisal logs)."""

__version__ = "0.1.0"

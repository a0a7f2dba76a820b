"""DICOM header reading and the DICOM JSON model, without Spark."""

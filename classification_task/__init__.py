"""Nodule / no-nodule classification of chest radiographs with MedGemma + QLoRA."""

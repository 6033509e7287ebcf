"""Evaluation over every modality combination: inference, metrics, reports."""

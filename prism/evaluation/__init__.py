"""Evaluation over every modality combination: inference, metrics, reports.

- ``inference``: whole-volume or sliding-window (MONAI, Gaussian) logits for all combinations in batched passes
- ``metrics`` / ``hausdorff`` / ``lesion``: region Dice (empty vs empty = 1), HD95 in mm in two named conventions
  (``monai``, ``brats2023``), the BraTS 2023 challenge's lesion-wise Dice and HD95
- ``scoring`` / ``report``: ``evaluate(model, reader, cases, ...)`` -> ``EvalReport``; ``write_report(report,
  run_dir)``; a combination is scored for a case only when the case has every modality of it (others NaN, out of
  the means); ``results.combination_mean`` is the one average every report prints
- ``provenance``: the checkpoint a report scored; ``report_matches_checkpoint(run_dir)``
- ``adaptation``: fast adaptation to a held-out site (K steps on N of its cases vs none)
- ``compare``: per-region differences between two reports with paired bootstrap intervals
"""

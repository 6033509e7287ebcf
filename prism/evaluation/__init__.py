"""Evaluation over every modality combination: inference, metrics, reports.

- ``inference``: whole-volume or sliding-window (MONAI, Gaussian) logits for all combinations in batched passes
- ``metrics`` / ``hausdorff``: region Dice (empty vs empty = 1), HD95 in mm with BraTS empty-set conventions
- ``scoring`` / ``report``: ``evaluate(model, reader, cases, ...)`` -> ``EvalReport``; ``report.write(run_dir)``;
  a combination is scored for a case only when the case has every modality of it (others NaN, out of the means)
- ``adaptation``: fast adaptation to a held-out site (K steps on N of its cases vs none)
- ``compare``: per-region differences between two reports with paired bootstrap intervals
"""

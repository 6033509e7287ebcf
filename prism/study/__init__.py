"""Studies: arms x seeds of ordinary prism runs, and a report with intervals over seeds and cases.

``prism-study run SPEC.yaml -o STUDY_DIR`` (:func:`prism.study.runner.run_study`) and ``prism-study report
STUDY_DIR`` (:func:`prism.study.report.write_study_report`).
"""

from .spec import StudySpec, load_spec, plan_runs

__all__ = ["StudySpec", "load_spec", "plan_runs"]

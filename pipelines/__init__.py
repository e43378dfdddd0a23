"""FIRM's Kubeflow Pipelines: `firm`, `critic`, `rl`, `bench` (see `pipelines.dags`), their components
(`pipelines.components`, thin wrappers over the `firm` API), per-step placement (`pipelines.placement`) and the
Python API behind `firmctl pipeline` (`pipelines.api`: list, compile, run locally, submit, upload). The compiled IR
is checked in under `pipelines/compiled/` for uploading in the KFP UI."""
